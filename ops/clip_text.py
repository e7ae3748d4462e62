"""clip_text: prompt tokens -> CLIP text embedding, in parallel with sampling."""
from __future__ import annotations

import torch

from ops.shared import bundle_for
from server.engine import Op


class ClipTextOp(Op):
    def setup(self, device: str) -> None:
        self.device = device
        self.bundle = bundle_for(self.settings.get("model_dir"), device, self.settings.get("half", False))

    @torch.inference_mode()
    def process(self, rows: list[dict]) -> list[dict]:
        text = torch.tensor([r["text"] for r in rows], device=self.device)
        emb = self.bundle.clip.encode_text(text).float().cpu()  # (B, d_embed)
        return [{"embedding": e, "num_images": r["num_images"]} for e, r in zip(emb, rows)]
