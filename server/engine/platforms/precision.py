"""Precision on a CPU: which one "auto" means, and the row-invariant kernels it needs.

bfloat16 on a CPU that computes it (AVX-512 BF16 or AMX, read from /proc/cpuinfo's flags):
oneDNN's bf16 matmuls there ran 2.2-5x faster than float32 at DALL·E Mini's shapes at 4-64
rows (1.5-2x at 2, about even at 1) (docs/performance/precision-2026-12-06), where a decode step is bound by reading its
weights and bf16 reads half the bytes. The bundled shapes model (256 wide, 4 layers) keeps
float32: its step is faster in bf16 too (1.3x at 8 rows, 1.65x at 64, in process), but its
quality figures (`tessera evaluate`) and served speed in bf16 have not been measured, and it
serves 20-30 images/s in float32 already.

Batch invariance: a request's bytes must not depend on what shares its batch. oneDNN's bf16
linear layers compute each row bit for bit the same at any row count of two or more, and
at any thread count, but a single row takes a matrix-vector path that sums in another
order (measured at K >= 2048; the same page). `RowInvariantLinear` runs a one-row call as
two rows, so every call takes the path of the batched ones.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

# The CPU flags that mean bf16 matmuls in hardware (Linux's names).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The families whose decode step measured faster in bfloat16 on such a CPU (see above).
BF16_FAMILIES = ("dalle-pytorch", "min-dalle")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def cpu_auto_dtype(family: str | None) -> str:
    """"auto" on a CPU: bfloat16 for the families it measured faster for, on a CPU with bf16
    matmuls; float32 otherwise."""
    return "bfloat16" if family in BF16_FAMILIES and cpu_has_bf16() else "float32"


class RowInvariantLinear(nn.Linear):
    """nn.Linear whose one-row calls run as two rows (the second a copy, dropped): the same
    kernel as every batched call, so a row's output never depends on its batch-mates."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1]:
            return F.linear(x, self.weight, self.bias)
        two = x.reshape(1, -1).expand(2, -1)
        return F.linear(two, self.weight, self.bias)[:1].reshape(*x.shape[:-1], self.out_features)


def make_row_invariant(module: nn.Module) -> int:
    """Every nn.Linear in `module` becomes a RowInvariantLinear (same parameters, same state
    dict); how many."""
    n = 0
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = RowInvariantLinear
            n += 1
    return n
