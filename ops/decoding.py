"""A family's decode step at a few fixed batch sizes, for a compiled or captured step.

Generic over the model family (ops/families/base.py): it wraps any SamplingModel's
`decode_step` over that model's RowCache; the sampler (sample.py) builds one when a model is
`graphable` and its `decode_mode` asks for buckets.

    decoder = BucketedDecoder(model, cache, [2, 4, 8], "padded")
    logits = decoder(tokens, index)  # (n, image_vocab): at the smallest bucket >= n (above the largest, eager)
"""
from __future__ import annotations

import torch

from tessera.ops.families.base import RowCache, SamplingModel
from tessera.server.engine.platforms import Compute, compute_for


class BucketedDecoder:
    """`decode_step` at a few fixed batch sizes, over one row cache: the device's platform runs
    it (platforms/buckets.py; modes "padded", "compile", and "cuda_graph" on a GPU).

    The padding rows of a step (token 0 at image index 0) write their state into the free
    slots n..bucket-1 at the first image position, which a row that later takes such a slot
    overwrites before it can see it. Buckets larger than the cache are dropped. Build it while
    no row is live (warming a bucket writes padding rows into its slots): the sampler builds
    it when it allocates the cache.
    """

    def __init__(self, model: SamplingModel, cache: RowCache, buckets: list[int] | tuple[int, ...], mode: str,
                 compute: Compute | None = None):
        fits = [b for b in buckets if 0 < int(b) <= cache.slots]
        if not fits:
            raise ValueError(f"no decode bucket fits the cache's {cache.slots} slots: {list(buckets)}")
        self.model, self.cache = model, cache
        zero = torch.zeros(1, dtype=torch.long, device=cache.device)

        def step(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return model.decode_step(tokens, index, cache)
        compute = compute or compute_for(str(cache.device))
        self._call = compute.bucketed(step, [zero, zero], fits, mode)
        self.buckets = self._call.buckets

    def __call__(self, tokens: torch.Tensor, index: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """The step at its bucket's size; `last` is not used: a compiled or captured step keeps
        one shape, the whole cache."""
        return self._call(tokens, index)
