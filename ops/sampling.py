"""Per-row sampling: temperature, top-k, top-p, classifier-free guidance.

Every row carries its own parameters and its own uniforms, drawn up front from its own
seeded generator, so a row's randomness never depends on its batch-mates. Generic over
the model family: the sampler (sample.py) draws every family's tokens with these.
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


# A row that keeps more than this many tokens by top-k alone (or every token: top_k 0), with
# top_p 1, draws by its inverse CDF in vocabulary order, past a threshold: no sort. Decided by
# the row's own parameters, so a row draws the same way whatever shares its batch.
WIDE_K = 1024


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, uniforms: torch.Tensor, head: int = 128) -> torch.Tensor:
    """logits (n, V); per-row temperature (n,), top_k (n,) with 0 = off, top_p (n,) in (0, 1],
    uniforms (n,) in [0, 1) -> token ids (n,), by inverse-CDF over the kept tokens.

    A row keeping few tokens (its top-k at most WIDE_K, or a top-p below 1) draws over them in
    descending order, from a partial selection (torch.topk in the logits' precision): the
    largest top-k when every such row has one, else the `head` most likely when every row's
    kept set lies inside them (its top-p mass is reached there); only otherwise is the whole
    vocabulary sorted. Their probabilities are exp(logit - logsumexp(row)) over the candidates
    alone: no softmax over the whole row in float64. Either way the pick is the same. A row
    keeping many (DALLE-pytorch's default top-k is 70% of its codes) draws in vocabulary order
    past its k-th largest logit (`_wide`), which costs a selection, not a sort."""
    n, vocab = logits.shape
    x = logits / temperature.to(logits.dtype)[:, None]                     # (n, V)
    norm = torch.logsumexp(x, dim=-1, keepdim=True)                        # (n, 1): the whole row's mass
    wide = ((top_k == 0) | (top_k > WIDE_K)) & (top_p >= 1.0)
    if not bool(wide.any()):
        return _narrow(x, norm, top_k, top_p, uniforms, head)
    if bool(wide.all()):
        return _wide(x, norm, top_k, uniforms)
    out = torch.empty(n, dtype=torch.long, device=logits.device)
    out[wide] = _wide(x[wide], norm[wide], top_k[wide], uniforms[wide])
    out[~wide] = _narrow(x[~wide], norm[~wide], top_k[~wide], top_p[~wide], uniforms[~wide], head)
    return out


def _narrow(x: torch.Tensor, norm: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
            uniforms: torch.Tensor, head: int) -> torch.Tensor:
    vocab, norm = x.shape[1], norm.double()
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


def _wide(x: torch.Tensor, norm: torch.Tensor, top_k: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Rows keeping their top_k largest logits (0: all): the k-th largest by a selection
    (kthvalue, once per distinct k), exactly k kept (ties at it by vocabulary order), then the
    inverse CDF in vocabulary order."""
    n, vocab = x.shape
    keep = None
    ks = top_k.unique().tolist()
    for k in ks:
        if not 0 < k < vocab:
            continue
        rows = None if len(ks) == 1 else (top_k == k).nonzero()[:, 0]  # one k (the usual case): no gather
        xs = x if rows is None else x[rows]
        thr = xs.kthvalue(vocab - k + 1, dim=-1, keepdim=True).values    # the k-th largest
        above = xs > thr
        at = xs == thr
        room = k - above.sum(-1, keepdim=True)                             # ties at the threshold to keep
        mine = above | (at & (at.cumsum(-1) <= room))
        if rows is None:
            keep = mine
        else:
            keep = torch.ones_like(x, dtype=torch.bool) if keep is None else keep
            keep[rows] = mine
    probs = (x - norm).exp()                                               # the logits' precision
    if keep is not None:
        probs = probs * keep
    cdf = probs.double().cumsum(-1)
    target = uniforms.to(cdf)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).clamp(max=vocab - 1).squeeze(1)


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
