"""rerank: joins decode and clip_text; scores each candidate with CLIP, keeps the best.

With no reranker (the model has none and none was given) the first `num_images` candidates
come back in sampling order with no score, and the response says they were not reranked."""
from __future__ import annotations

import numpy as np
import torch

from tessera.ops.messages import DecodedImage, RankedImage, RankedImages, RerankInputs
from tessera.ops.requests import response_fields
from tessera.ops.shared import ForwardSettings, ModelOp, to_png


class RerankOp(ModelOp):
    Inputs = RerankInputs  # the YAML maps `images` and `text_embedding` to the OPs feeding them
    Settings = ForwardSettings
    config_defaults = {"batch_size": 16, "batch_timeout_ms": 2}
    # This OP's result -> the response's fields (the graph's output OP maps responses).
    to_response = staticmethod(response_fields)

    @staticmethod
    def describe(settings: ForwardSettings) -> dict:
        """What GetInfo says is served: the model this OP's settings name (the `model` section
        fills them), described from its files (ops/info.py)."""
        from tessera.ops.info import describe_model
        return describe_model(settings.model)

    def setup(self, device: str) -> None:
        super().setup(device)
        clip = self.bundle.clip
        if clip is None:
            return
        side = self.bundle.dvae.image_size
        self._encode = self.forward(clip.encode_image,
                                    [torch.zeros(1, side, side, 3, dtype=torch.uint8, device=device)])

    @torch.inference_mode()
    def process(self, rows: list[RerankInputs]) -> list[RankedImages]:
        if self.bundle.clip is None:
            return [self._unranked(r) for r in rows]
        # One image-encoder call for every candidate of every request in the batch.
        candidates = [c for r in rows for c in r.images]
        pixels = torch.from_numpy(np.stack([c.pixels for c in candidates])).to(self.device)
        emb = self._encode(pixels).cpu()  # (N, d_embed)
        out, at = [], 0
        for r in rows:
            n = len(r.images)
            scores = (emb[at:at + n] @ r.text_embedding.embedding).tolist()
            at += n
            order = sorted(range(n), key=lambda i: (-scores[i], i))[: r.text_embedding.num_images]
            out.append(RankedImages([self._image(r.images[i], scores[i]) for i in order],
                                    r.text_embedding.unknown_words, notes=r.text_embedding.notes))
        return out

    def _unranked(self, r: RerankInputs) -> RankedImages:
        """Sampling order, score 0: no reranker to ask."""
        best = sorted(r.images, key=lambda c: c.candidate_index)[: r.text_embedding.num_images]
        return RankedImages([self._image(c, 0.0) for c in best], r.text_embedding.unknown_words,
                            reranked=False, notes=r.text_embedding.notes)

    @staticmethod
    def _image(candidate: DecodedImage, score: float) -> RankedImage:
        img = candidate.pixels
        return RankedImage(png=to_png(img), clip_score=float(score), seed=candidate.seed,
                           candidate_index=candidate.candidate_index,
                           height=int(img.shape[0]), width=int(img.shape[1]))
