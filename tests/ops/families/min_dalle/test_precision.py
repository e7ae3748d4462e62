"""min-dalle in bfloat16 against the same files in float32: the quality contract of
tests/ops/families/test_precision.py (docs/models.md, Precision)."""
from __future__ import annotations

import pytest
import torch

from tests.ops.families.test_precision import check, pair


@pytest.mark.slow
def test_min_dalle_in_bfloat16_keeps_the_contract(oracle):
    ref, low = pair(oracle.root)
    assert low.dvae.channels_last and next(low.dvae.parameters()).dtype == torch.bfloat16
    tok = low.tokenizer
    text = torch.tensor([tok.encode_prompt("a photo of the cat sitting on the mat").ids, tok.empty()])
    grids = torch.randint(0, 2 ** 14, (1, 256))
    check(ref, low, text, grids)
