"""Per-row sampling: temperature, top-k, top-p, classifier-free guidance.

Every row carries its own parameters and its own uniforms, drawn up front from its own
seeded generator, so a row's randomness never depends on its batch-mates.
"""
from __future__ import annotations

import torch


def row_uniforms(seed: int, count: int) -> torch.Tensor:
    """The `count` uniforms a row with this seed consumes, one per image token."""
    gen = torch.Generator().manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.rand(count, generator=gen, dtype=torch.float64)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance on logits; scale (n,) of 1 means no guidance."""
    return uncond + scale[:, None] * (cond - uncond)


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, uniforms: torch.Tensor, head: int = 128) -> torch.Tensor:
    """logits (n, V); per-row temperature (n,), top_k (n,) with 0 = off, top_p (n,) in (0, 1],
    uniforms (n,) in [0, 1) -> token ids (n,), by inverse-CDF over the kept tokens.

    The candidates are a partial selection (torch.topk in the logits' precision): the largest
    top-k when every row has one, else the `head` most likely when every row's kept set lies
    inside them (its top-p mass is reached there); only otherwise is the whole vocabulary
    sorted. Their probabilities are exp(logit - logsumexp(row)) in float64 over the candidates
    alone: no softmax over the whole row in float64. Either way the pick is the same."""
    n, vocab = logits.shape
    x = logits / temperature.to(logits.dtype)[:, None]                     # (n, V)
    norm = torch.logsumexp(x, dim=-1, keepdim=True).double()               # (n, 1): the whole row's mass
    if bool((top_k > 0).all()) and int(top_k.max()) < vocab:
        top, order = x.topk(int(top_k.max()), dim=-1)                      # sorted, descending
        return _inverse_cdf((top.double() - norm).exp(), order, top_k, top_p, uniforms)
    if head < vocab:
        top, order = x.topk(head, dim=-1)
        probs = (top.double() - norm).exp()
        inside = ((top_k > 0) & (top_k <= head)) | (probs.cumsum(-1)[:, -1] >= top_p.double())
        if bool(inside.all()):
            return _inverse_cdf(probs, order, top_k, top_p, uniforms)
    top, order = x.sort(dim=-1, descending=True)
    return _inverse_cdf((top.double() - norm).exp(), order, top_k, top_p, uniforms)


def _inverse_cdf(probs: torch.Tensor, order: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 uniforms: torch.Tensor) -> torch.Tensor:
    """probs (n, K) sorted descending with their token ids `order`: keep, renormalise, pick."""
    rank = torch.arange(probs.shape[1], device=probs.device)[None, :]
    k = torch.where(top_k > 0, top_k, probs.shape[1])[:, None]
    before = probs.cumsum(-1) - probs  # mass strictly ahead of each token
    keep = (rank < k) & ((before < top_p.double()[:, None]) | (rank == 0))
    probs = probs * keep
    cdf = probs.cumsum(-1)
    target = uniforms.to(cdf)[:, None] * cdf[:, -1:]
    pick = torch.searchsorted(cdf, target, right=True).clamp(max=probs.shape[1] - 1)
    return order.gather(1, pick).squeeze(1)
