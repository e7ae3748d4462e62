"""decode: image token grids -> pixels with the dVAE decoder, one row per candidate."""
from __future__ import annotations

import torch

from ops.shared import bundle_for, to_uint8
from server.engine import Op


class DecodeOp(Op):
    def setup(self, device: str) -> None:
        self.device = device
        self.bundle = bundle_for(self.settings.get("model_dir"), device, self.settings.get("half", False))

    def split(self, value: list[dict]) -> list[dict]:
        return value  # the sampler's candidates

    def merge(self, value: list[dict], outputs: list[dict]) -> list[dict]:
        return outputs

    @torch.inference_mode()
    def process(self, rows: list[dict]) -> list[dict]:
        tokens = torch.stack([r["tokens"] for r in rows]).to(self.device)
        images = to_uint8(self.bundle.dvae.decode(tokens))  # (B, H, W, 3)
        return [{"image": img, "seed": r["seed"], "candidate_index": r["candidate_index"]}
                for img, r in zip(images, rows)]
