"""rerank: joins decode and clip_text; scores each candidate with CLIP, keeps the best."""
from __future__ import annotations

import numpy as np
import torch

from tessera.ops.messages import DecodedImage, RankedImage, RankedImages, RerankInputs
from tessera.ops.shared import ForwardSettings, ModelOp, to_png


class RerankOp(ModelOp):
    Inputs = RerankInputs  # the YAML maps `images` and `text_embedding` to the OPs feeding them
    Settings = ForwardSettings

    def setup(self, device: str) -> None:
        super().setup(device)
        clip = self.bundle.clip
        dtype = clip.logit_scale.dtype
        side = self.bundle.dvae.cfg.image_size

        def encode(pixels: torch.Tensor) -> torch.Tensor:  # (N, H, W, 3) uint8 -> (N, d_embed)
            return clip.encode_image(pixels.permute(0, 3, 1, 2).to(dtype) / 255.0).float()
        self._encode = self.forward(encode, [torch.zeros(1, side, side, 3, dtype=torch.uint8, device=device)])

    @torch.inference_mode()
    def process(self, rows: list[RerankInputs]) -> list[RankedImages]:
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
                                    r.text_embedding.unknown_words))
        return out

    @staticmethod
    def _image(candidate: DecodedImage, score: float) -> RankedImage:
        img = candidate.pixels
        return RankedImage(png=to_png(img), clip_score=float(score), seed=candidate.seed,
                           candidate_index=candidate.candidate_index,
                           height=int(img.shape[0]), width=int(img.shape[1]))
