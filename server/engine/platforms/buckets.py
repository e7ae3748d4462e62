"""A model function at a few fixed batch sizes, so that it can be compiled or captured once
per size and replayed: the sampler's decode step, and the dVAE and CLIP calls of the
decode, clip_text and rerank OPs. An OP asks its device's platform for one
(`compute_for(device).bucketed(...)`, platforms/__init__.py); the platform decides which
modes its device has and what "auto" means there.

A call of n rows runs at the smallest bucket >= n: its inputs are copied into that
bucket's static buffers, the rows n..bucket-1 are padding, and the first n rows of the
output are returned. Above the largest bucket the function runs eagerly on the inputs as
given. The function must treat rows independently (a padding row never changes a real
row's output). Modes:

- "off": always eager (the caller's choice; `Bucketed` is not built).
- "padded": the eager function on the padded buffers (what the others compile; tests).
- "compile": `torch.compile(dynamic=False)`, one graph per bucket (inductor).
- "cuda_graph": one CUDA graph per bucket, captured once and replayed: a call's kernels
  launch as one unit instead of one Python-dispatched op at a time (`CudaGraphs`, the CUDA
  platform's: platforms/cuda.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

MODES = ("off", "padded", "compile", "cuda_graph")


def default_buckets(largest: int) -> list[int]:
    """Powers of two up to `largest` (and `largest` itself)."""
    return sorted({2 ** i for i in range(max(largest, 1).bit_length()) if 2 ** i <= largest} | {largest})


class Bucketed:
    """`fn(*inputs)` -> one tensor, every input and the output with the batch as dim 0
    (modes "padded" and "compile"; a subclass captures, as the CUDA platform's CudaGraphs).

    `rows` holds one example row per input, shape (1, ...): it fixes each input's shape,
    dtype and device, and fills the buffers, so warm-up and capture see valid inputs.
    `pad` says what a padding row holds: "zero", or "first" (a copy of the call's first
    row, for a function that needs valid rows everywhere, such as a padding mask that
    must not mask a whole row)."""

    modes = ("padded", "compile")

    def __init__(self, fn: Callable[..., torch.Tensor], rows: Sequence[torch.Tensor],
                 buckets: Sequence[int], mode: str, pad: str = "zero"):
        if mode not in self.modes:
            raise ValueError(f"bucketed mode {mode!r}: expected one of {', '.join(self.modes)}")
        if pad not in ("zero", "first"):
            raise ValueError(f"pad {pad!r}: expected zero or first")
        self.buckets = sorted({int(b) for b in buckets if int(b) > 0})
        if not self.buckets:
            raise ValueError(f"no positive bucket in {list(buckets)}")
        self.fn, self.mode, self.pad = fn, mode, pad
        self._buffers = {b: [r.expand(b, *r.shape[1:]).clone() for r in rows] for b in self.buckets}
        self._fn = torch.compile(fn, dynamic=False) if mode == "compile" else fn
        self._prepare(rows[0].device)

    def _prepare(self, device: torch.device) -> None:
        """Compile (or just touch) every bucket now, not mid-request."""
        with torch.inference_mode():
            for b in self.buckets:
                self._fn(*self._buffers[b])

    def _run(self, b: int, buffers: list[torch.Tensor], n: int) -> torch.Tensor:
        """Bucket `b`'s call on its filled buffers: the output's first `n` rows."""
        return self._fn(*buffers)[:n]

    def bucket(self, n: int) -> int | None:
        return next((b for b in self.buckets if b >= n), None)

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        n = inputs[0].shape[0]
        b = self.bucket(n)
        if b is None:
            return self.fn(*inputs)
        buffers = self._buffers[b]
        for buf, x in zip(buffers, inputs):
            buf[:n].copy_(x)
            if n < b:
                if self.pad == "zero":
                    buf[n:].zero_()
                else:
                    buf[n:].copy_(x[:1].expand(b - n, *x.shape[1:]))
        return self._run(b, buffers, n)

