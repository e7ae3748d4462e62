"""clip_text: prompt tokens -> CLIP text embedding, in parallel with sampling.

A model with no reranker (a DALLE-pytorch checkpoint served without --clip) passes the
request's answer-shaping fields through with no embedding: rerank keeps sampling order."""
from __future__ import annotations

import torch

from tessera.ops.messages import TextEmbedding, TokenizedPrompt
from tessera.ops.shared import ForwardSettings, ModelOp


class ClipTextOp(ModelOp):
    Settings = ForwardSettings
    config_defaults = {"batch_size": 32, "batch_timeout_ms": 1}

    def setup(self, device: str) -> None:
        super().setup(device)
        clip = self.bundle.clip
        if clip is None:
            return
        # An example row of a real prompt, and padding rows copying a call's first: a row of
        # padding alone may be masked whole.
        text = torch.tensor([clip.tokenize("a")], dtype=torch.long, device=device)
        self._encode = self.forward(clip.encode_text, [text], pad="first")

    @torch.inference_mode()
    def process(self, rows: list[TokenizedPrompt]) -> list[TextEmbedding]:
        if self.bundle.clip is None:
            return [TextEmbedding(None, r.num_images, r.unknown_words, r.notes) for r in rows]
        text = torch.tensor([r.clip_text for r in rows], device=self.device)
        emb = self._encode(text).float().cpu()  # (B, d_embed)
        return [TextEmbedding(e, r.num_images, r.unknown_words, r.notes) for e, r in zip(emb, rows)]
