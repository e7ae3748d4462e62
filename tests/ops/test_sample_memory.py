"""The sampler allocates its whole cache at start-up, and only when it fits: a batch_size too
big for the memory left beside the weights is one line saying what fits, never a crash later."""
from __future__ import annotations

import pytest
import torch

from tessera.ops.families.tessera.loading import load_model_dir
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


def test_mega_in_bfloat16_fits_24_gib_with_a_batch_of_16():
    """DALL·E Mega's shapes (24 + 24 layers, 2048 wide, GLU 4096, 50,272 text tokens) on the meta
    device: its bfloat16 weights and the sampler's cache for 16 rows (32 slots with their
    unconditional twins) fit 90% of 24 GiB beside each other, as the platform would check them;
    so does the shipped batch_size 64 (one sampler worker: a bf16 step runs one per CPU)."""
    from tessera.ops.families.min_dalle.model import MinDalleBart, MinDalleConfig

    cfg = MinDalleConfig(encoder_layers=24, decoder_layers=24, embed=2048, heads=32, encoder_glu=4096,
                         decoder_glu=4096, text_vocab=50272, text_len=64, decoder_vocab=16416, image_vocab=16384)
    with torch.device("meta"):
        model = MinDalleBart(cfg)
    params = sum(p.numel() for p in model.parameters()) + 16384 * 256 + 40_000_000  # + the VQGAN (~44 M)
    budget = 0.9 * 24 * 2 ** 30
    assert 2 * params + cache_bytes(model, 32, torch.bfloat16) < budget
    assert 2 * params + cache_bytes(model, 128, torch.bfloat16) < budget
    assert cache_bytes(model, 32, torch.bfloat16) < 0.51 * cache_bytes(model, 32, torch.float32)  # 1.9 GiB
