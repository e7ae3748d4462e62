"""The quality contract of a reduced precision (docs/models.md, Precision): how far a model
loaded in bfloat16 or float16 is from the same files in float32, measured the same way by
the tests (tiny models) and by docs/performance/experiments/precision_quality.py (real shapes).

    ref, low = load_model(spec, "cpu", torch.float32), load_model(spec, "cpu", torch.bfloat16)
    steps = teacher_forced(ref.transformer, low.transformer, text, tokens)  # StepAgreement
    pixels = pixel_levels(ref.dvae, low.dvae, tokens)                        # PixelAgreement

Teacher-forced: both models are fed the same image tokens (the float32 model's own draw), so
every step compares the two next-token distributions at the same prefix, over a whole image.
The measure is the total variation distance between them, the largest share of probability
that moves (a draw from the reduced model differs from float32's, for the same uniform, with
probability at most about this), and the greedy token's agreement.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tessera.ops.families.base import ImageDecoder, SamplingModel


@dataclass(frozen=True)
class StepAgreement:
    steps: int
    tv_mean: float        # mean over steps (and rows) of the total variation distance
    tv_p99: float         # its 99th percentile
    top1: float           # share of steps whose most likely token is the same
    kl_mean: float        # mean KL(float32 || reduced), nats


@dataclass(frozen=True)
class PixelAgreement:
    max_levels: int       # the largest |difference| of a uint8 channel
    p999_levels: float    # 99.9th percentile of |difference|
    mean_levels: float


@torch.inference_mode()
def teacher_forced(ref: SamplingModel, low: SamplingModel, text: torch.Tensor,
                   tokens: torch.Tensor | None = None, seed: int = 0) -> StepAgreement:
    """`ref` and `low` over one image for each prompt of `text` (G, text_len): prefill, then
    every decode step fed `tokens` (G, image_len), or, when None, tokens drawn from `ref`'s
    own distribution (seeded) as it goes."""
    G = text.shape[0]
    rows = torch.arange(G)
    dists = []
    caches = [m.new_cache(G, "cpu", next(m.parameters()).dtype) for m in (ref, low)]
    logits = [m.prefill(text, c, rows).float() for m, c in zip((ref, low), caches)]
    gen = torch.Generator().manual_seed(seed)
    fed = []
    for i in range(ref.image_len):
        dists.append((logits[0].log_softmax(-1), logits[1].log_softmax(-1)))
        if i == ref.image_len - 1:
            break
        if tokens is not None:
            tok = tokens[:, i]
        else:
            tok = torch.multinomial(dists[-1][0].exp(), 1, generator=gen)[:, 0]
        fed.append(tok)
        index = torch.full((G,), i)
        logits = [m.decode_step(tok, index, c, i).float() for m, c in zip((ref, low), caches)]
    a = torch.stack([d[0] for d in dists])   # (steps, G, V) log-probabilities
    b = torch.stack([d[1] for d in dists])
    tv = 0.5 * (a.exp() - b.exp()).abs().sum(-1).flatten()
    kl = (a.exp() * (a - b)).sum(-1).flatten()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean()
    return StepAgreement(steps=len(dists), tv_mean=float(tv.mean()), tv_p99=float(tv.quantile(0.99)),
                         top1=float(top1), kl_mean=float(kl.mean()))


@torch.inference_mode()
def pixel_levels(ref: ImageDecoder, low: ImageDecoder, tokens: torch.Tensor) -> PixelAgreement:
    """The two decoders' uint8 pixels of the same token grids (B, image_len)."""
    d = (ref.pixels(tokens).int() - low.pixels(tokens).int()).abs().flatten().float()
    return PixelAgreement(max_levels=int(d.max()), p999_levels=float(d.quantile(0.999)) if d.numel() < 2 ** 24
                          else float(d[torch.randperm(d.numel())[:2 ** 24]].quantile(0.999)),
                          mean_levels=float(d.mean()))
