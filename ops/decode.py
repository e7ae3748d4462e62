"""decode: image token grids -> pixels with the dVAE decoder, one row per candidate."""
from __future__ import annotations

import torch

from tessera.ops.messages import DecodedImage, SampledCandidate
from tessera.ops.shared import ModelOp, to_uint8


class DecodeOp(ModelOp):
    def split(self, value: list[SampledCandidate]) -> list[SampledCandidate]:
        return value  # the sampler's candidates

    def merge(self, value: list[SampledCandidate], outputs: list[DecodedImage]) -> list[DecodedImage]:
        return outputs

    @torch.inference_mode()
    def process(self, rows: list[SampledCandidate]) -> list[DecodedImage]:
        tokens = torch.stack([r.tokens for r in rows]).to(self.device)
        images = to_uint8(self.bundle.dvae.decode(tokens))  # (B, H, W, 3)
        return [DecodedImage(img, r.seed, r.candidate_index) for img, r in zip(images, rows)]
