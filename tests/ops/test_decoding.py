"""The bucketed decode step (padded, compiled) samples the same tokens as the eager step."""
from __future__ import annotations

import pytest
import torch

from tessera.ops.decoding import BucketedDecoder
from tessera.ops.families.tessera.transformer import KVCache
from tessera.ops.sample import SampleOp
from tessera.server.engine import ConfigError
from tests.ops.families.tessera.test_transformer import row, run_to_end, sampler, tiny

T1, T2 = [3, 7, 9, 0, 0, 0], [5, 5, 1, 2, 0, 0]


def mixed_run(op):
    """Joins mid-run, guided and unguided rows, an eviction from the middle."""
    op.admit([row("a", T1, 1, guidance=2.0), row("b", T2, 2), row("c", T1, 3, top_k=5)])
    op.step()
    op.evict(["b"])
    return run_to_end(op, [[], [row("d", T2, 4, guidance=3.0)], [], [row("e", T2, 5, top_p=0.8)]])


def test_padded_buckets_sample_the_eager_tokens_through_joins_guidance_and_eviction():
    model = tiny()
    eager = mixed_run(sampler(model, 4))
    # Buckets 2 and 4 of the cache's 8 slots: steps of 3-4 slots pad up, larger ones run eagerly.
    padded = sampler(model, 4, decode_mode="padded", decode_buckets=[2, 4])
    assert mixed_run(padded) == eager
    assert padded.decoder.buckets == [2, 4]


def test_compiled_step_samples_the_eager_tokens():
    model = tiny()
    eager = mixed_run(sampler(model, 4))
    assert mixed_run(sampler(model, 4, decode_mode="compile", decode_buckets=[8])) == eager


def test_picking_tokens_on_the_cpu_samples_the_same_tokens():
    # On a CPU the model's device is the CPU: both settings pick from the same logits there.
    model = tiny()
    assert mixed_run(sampler(model, 4, sample_on="cpu")) == mixed_run(sampler(model, 4, sample_on="device"))


def test_padding_rows_never_reach_a_live_row():
    model = tiny()
    cache = KVCache(model.cfg, 4)
    decoder = BucketedDecoder(model, cache, [4], "padded")
    model.prefill(torch.tensor([T1]), cache, torch.tensor([0]))
    before = torch.stack([k[0] for k in cache.k])  # slot 0, every layer
    decoder(torch.tensor([7]), torch.tensor([3]))  # one live row; slots 1-3 are padding
    changed = (torch.stack([k[0] for k in cache.k]) != before).any(dim=(0, 1, 3)).nonzero().flatten().tolist()
    assert changed == [model.cfg.text_len + 3]  # only the live row's own new position


def test_a_bad_decode_setting_or_bucket_list_is_refused_clearly():
    model = tiny()
    with pytest.raises(ConfigError, match="decode_mode: must be one of auto, off, padded") as err:
        SampleOp(decode_mode="fast")
    assert err.value.key == "decode_mode"
    with pytest.raises(ConfigError, match="decode_buckets: must be positive"):
        SampleOp(decode_buckets=[4, 0])
    with pytest.raises(ConfigError, match="sample_on: must be auto, device or cpu; got 'gpu'"):
        SampleOp(sample_on="gpu")
    with pytest.raises(ValueError, match="no decode bucket fits"):
        BucketedDecoder(model, KVCache(model.cfg, 4), [8, 16], "padded")
