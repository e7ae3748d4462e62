"""clip_text: prompt tokens -> CLIP text embedding, in parallel with sampling."""
from __future__ import annotations

import torch

from tessera.ops.messages import TextEmbedding, TokenizedPrompt
from tessera.ops.shared import ModelOp


class ClipTextOp(ModelOp):
    @torch.inference_mode()
    def process(self, rows: list[TokenizedPrompt]) -> list[TextEmbedding]:
        text = torch.tensor([r.text for r in rows], device=self.device)
        emb = self.bundle.clip.encode_text(text).float().cpu()  # (B, d_embed)
        return [TextEmbedding(e, r.num_images, r.unknown_words) for e, r in zip(emb, rows)]
