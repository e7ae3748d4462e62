"""The sampler allocates its whole cache at start-up, and only when it fits: a batch_size too
big for the memory left beside the weights is one line saying what fits, never a crash later."""
from __future__ import annotations

import pytest
import torch

from tessera.ops.models.loading import load_model_dir
from tessera.ops.sample import SampleOp, cache_bytes
from tessera.server.engine.platforms.cpu import CpuCompute


def test_cache_bytes_are_the_caches_tensors():
    model = load_model_dir(None).transformer
    cfg = model.cfg
    per_row = 2 * cfg.n_layer * cfg.n_head * cfg.seq_len * cfg.head_dim * 4  # keys and values, fp32
    assert cache_bytes(model, 10, torch.float32) == 10 * per_row


def test_a_batch_size_that_does_not_fit_fails_at_setup_saying_what_fits(monkeypatch):
    op = SampleOp()
    op.capacity = 64
    per_row = cache_bytes(load_model_dir(None).transformer, 1, torch.float32)
    # The CPU platform says how much memory is free: room for 36 slots, 18 rows.
    monkeypatch.setattr(CpuCompute, "free_memory", lambda self: 40 * per_row)
    with pytest.raises(MemoryError, match="batch_size to at most 18"):
        op.setup("cpu")
    op.capacity = 16
    op.setup("cpu")  # 32 slots fit
    assert op.cache.slots == 32
