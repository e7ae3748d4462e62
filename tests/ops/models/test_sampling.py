"""Per-row sampling: filters act per row, randomness is the row's own."""
from __future__ import annotations

import torch

from ops.models.sampling import guide, row_uniforms, sample_tokens


def test_top_k_one_is_greedy_and_top_p_keeps_the_head():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]] * 3)
    u = torch.tensor([0.99, 0.5, 0.99])
    out = sample_tokens(logits, torch.ones(3), torch.tensor([1, 0, 2]), torch.tensor([1.0, 1e-6, 1.0]), u)
    assert out[0] == 1  # top-k 1
    assert out[1] == 1  # top-p tiny keeps the most likely token only
    assert out[2] in (1, 3)  # top-k 2 keeps tokens 1 and 3


def test_same_uniform_gives_same_token_whatever_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(5, 30)
    u = torch.rand(5, dtype=torch.float64)
    ones = torch.ones(5)
    together = sample_tokens(logits, ones, torch.zeros(5, dtype=torch.long), ones, u)
    alone = [sample_tokens(logits[i:i + 1], ones[:1], torch.zeros(1, dtype=torch.long), ones[:1], u[i:i + 1])
             for i in range(5)]
    assert together.tolist() == [int(a) for a in alone]


def test_row_uniforms_depend_on_the_seed_alone():
    assert torch.equal(row_uniforms(42, 8), row_uniforms(42, 8))
    assert not torch.equal(row_uniforms(42, 8), row_uniforms(43, 8))


def test_guidance_scale_one_is_the_conditional():
    cond, uncond = torch.randn(2, 6), torch.randn(2, 6)
    torch.testing.assert_close(guide(cond, uncond, torch.ones(2)), cond)
