"""clip_text: prompt tokens -> CLIP text embedding, in parallel with sampling."""
from __future__ import annotations

import torch

from tessera.ops.messages import TextEmbedding, TokenizedPrompt
from tessera.ops.shared import ForwardSettings, ModelOp


class ClipTextOp(ModelOp):
    Settings = ForwardSettings

    def setup(self, device: str) -> None:
        super().setup(device)
        clip = self.bundle.clip
        # An example row of real tokens, and padding rows copying a call's first: a row of
        # <pad> alone would be masked whole.
        text = torch.full((1, clip.cfg.text_len), clip.pad_id, dtype=torch.long, device=device)
        text[0, 0] = (clip.pad_id + 1) % clip.cfg.text_vocab
        self._encode = self.forward(lambda ids: clip.encode_text(ids).float(), [text], pad="first")

    @torch.inference_mode()
    def process(self, rows: list[TokenizedPrompt]) -> list[TextEmbedding]:
        text = torch.tensor([r.text for r in rows], device=self.device)
        emb = self._encode(text).cpu()  # (B, d_embed)
        return [TextEmbedding(e, r.num_images, r.unknown_words) for e, r in zip(emb, rows)]
