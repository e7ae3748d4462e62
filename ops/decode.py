"""decode: image token grids -> pixels with the dVAE decoder, one row per candidate."""
from __future__ import annotations

import torch

from tessera.ops.messages import DecodedImage, SampledCandidate
from tessera.ops.shared import ForwardSettings, ModelOp, uint8_pixels


class DecodeOp(ModelOp):
    Settings = ForwardSettings

    def setup(self, device: str) -> None:
        super().setup(device)
        dvae = self.bundle.dvae
        grid = torch.zeros(1, dvae.cfg.grid ** 2, dtype=torch.long, device=device)
        self._decode = self.forward(lambda tokens: uint8_pixels(dvae.decode(tokens)), [grid])

    def split(self, value: list[SampledCandidate]) -> list[SampledCandidate]:
        return value  # the sampler's candidates

    def merge(self, value: list[SampledCandidate], outputs: list[DecodedImage]) -> list[DecodedImage]:
        return outputs

    @torch.inference_mode()
    def process(self, rows: list[SampledCandidate]) -> list[DecodedImage]:
        tokens = torch.stack([r.tokens for r in rows]).to(self.device)
        images = self._decode(tokens).cpu().numpy()  # (B, H, W, 3) uint8
        return [DecodedImage(img, r.seed, r.candidate_index) for img, r in zip(images, rows)]
