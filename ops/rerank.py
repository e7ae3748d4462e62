"""rerank: joins decode and clip_text; scores each candidate with CLIP, keeps the best."""
from __future__ import annotations

import numpy as np
import torch

from tessera.ops.shared import ModelOp, to_png


class RerankOp(ModelOp):
    @torch.inference_mode()
    def process(self, rows: list[dict]) -> list[dict]:
        # One image-encoder call for every candidate of every request in the batch.
        candidates = [c for r in rows for c in r["decode"]]
        pixels = torch.from_numpy(np.stack([c["image"] for c in candidates])).to(self.device)
        pixels = pixels.permute(0, 3, 1, 2).to(self.bundle.clip.logit_scale.dtype) / 255.0
        emb = self.bundle.clip.encode_image(pixels).float().cpu()  # (N, d_embed)
        out, at = [], 0
        for r in rows:
            n = len(r["decode"])
            scores = (emb[at:at + n] @ r["clip_text"]["embedding"]).tolist()
            at += n
            order = sorted(range(n), key=lambda i: (-scores[i], i))[: r["clip_text"]["num_images"]]
            out.append({"images": [self._image(r["decode"][i], scores[i]) for i in order],
                        "unknown_words": r["clip_text"]["unknown_words"]})
        return out

    @staticmethod
    def _image(candidate: dict, score: float) -> dict:
        img = candidate["image"]
        return {"png": to_png(img), "clip_score": float(score), "seed": candidate["seed"],
                "candidate_index": candidate["candidate_index"],
                "height": int(img.shape[0]), "width": int(img.shape[1])}
