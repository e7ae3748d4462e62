"""Bucketed model calls: padded rows never change a real row, and larger calls run eagerly."""
from __future__ import annotations

import pytest
import torch

from tessera.server.engine.platforms.buckets import Bucketed, default_buckets


def rowwise(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each row on its own (a padding row must not reach a real one); records its batch size."""
    rowwise.sizes.append(x.shape[0])
    return x.float() * 2 + y.sum(-1, keepdim=True)


rowwise.sizes = []


def test_a_call_runs_at_its_bucket_and_returns_only_its_rows():
    rowwise.sizes.clear()
    rows = [torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 2)]
    fn = Bucketed(rowwise, rows, [2, 8, 4], "padded")
    assert fn.buckets == [2, 4, 8] and rowwise.sizes == [2, 4, 8]  # every bucket warmed at build
    x, y = torch.arange(9).view(3, 3), torch.rand(3, 2)
    out = fn(x, y)
    assert rowwise.sizes[-1] == 4 and out.shape == (3, 3)
    torch.testing.assert_close(out, rowwise(x, y), rtol=0, atol=0)
    big = fn(torch.arange(27).view(9, 3), torch.rand(9, 2))  # above the largest bucket: eager, as given
    assert big.shape == (9, 3) and rowwise.sizes[-1] == 9


def test_padding_rows_hold_zeros_or_the_first_row():
    seen = []

    def keep(x):
        seen.append(x.clone())
        return x

    for pad, expect in (("zero", [[5, 6], [0, 0], [0, 0], [0, 0]]), ("first", [[5, 6], [5, 6], [5, 6], [5, 6]])):
        fn = Bucketed(keep, [torch.zeros(1, 2)], [4], "padded", pad=pad)
        assert fn(torch.tensor([[5.0, 6.0]])).tolist() == [[5, 6]]
        assert seen[-1].tolist() == expect


def test_bad_modes_pads_and_buckets_are_refused():
    with pytest.raises(ValueError, match="bucketed mode 'fast'"):
        Bucketed(rowwise, [torch.zeros(1, 1)], [2], "fast")
    with pytest.raises(ValueError, match="pad 'edge'"):
        Bucketed(rowwise, [torch.zeros(1, 1)], [2], "padded", pad="edge")
    with pytest.raises(ValueError, match="no positive bucket"):
        Bucketed(rowwise, [torch.zeros(1, 1)], [0], "padded")


def test_default_buckets_are_powers_of_two_up_to_the_largest():
    assert default_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
