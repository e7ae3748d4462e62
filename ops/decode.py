"""decode: image token grids -> pixels with the family's decoder (a dVAE, OpenAI's dVAE, a
VQGAN), one row per candidate, converted to uint8 as the family's own project saves images."""
from __future__ import annotations

import torch

from tessera.ops.messages import DecodedImage, SampledCandidate
from tessera.ops.shared import ForwardSettings, ModelOp


class DecodeOp(ModelOp):
    Settings = ForwardSettings
    config_defaults = {"batch_size": 64, "batch_timeout_ms": 2}

    def setup(self, device: str) -> None:
        super().setup(device)
        dvae = self.bundle.dvae
        # A decoder whose convolutions split their sums between threads (min-dalle's VQGAN:
        # 1 uint8 level apart at one and two threads) computes with one count always.
        self.thread_exact = not getattr(dvae, "thread_invariant", False)
        grid = torch.zeros(1, dvae.image_len, dtype=torch.long, device=device)
        self._decode = self.forward(dvae.pixels, [grid])

    def split(self, value: list[SampledCandidate]) -> list[SampledCandidate]:
        return value  # the sampler's candidates

    def merge(self, value: list[SampledCandidate], outputs: list[DecodedImage]) -> list[DecodedImage]:
        return outputs

    @torch.inference_mode()
    def process(self, rows: list[SampledCandidate]) -> list[DecodedImage]:
        tokens = torch.stack([r.tokens for r in rows]).to(self.device)
        images = self._decode(tokens).cpu().numpy()  # (B, H, W, 3) uint8
        return [DecodedImage(img, r.seed, r.candidate_index) for img, r in zip(images, rows)]
