"""Per-row sampling: filters act per row, randomness is the row's own."""
from __future__ import annotations

import torch

from tessera.ops.sampling import guide, row_uniforms, sample_tokens


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


def test_sorting_only_the_head_picks_what_sorting_everything_picks():
    torch.manual_seed(1)
    n, V = 64, 1024
    logits = torch.randn(n, V) * torch.linspace(0.5, 6.0, n)[:, None]  # flat to peaked rows
    temperature = torch.linspace(0.7, 1.3, n)
    top_p = torch.tensor([0.9, 0.5, 0.99, 1.0] * (n // 4))              # 1.0: needs the whole tail
    top_k = torch.tensor([0, 0, 0, 0, 5, 0, 300, 0] * (n // 8))          # 300: beyond the head
    for draw in range(5):
        u = torch.rand(n, dtype=torch.float64)
        full = sample_tokens(logits, temperature, top_k, top_p, u, head=V)
        assert torch.equal(sample_tokens(logits, temperature, top_k, top_p, u, head=32), full)
        # rows whose nucleus lies in the head take the short path, and agree row by row
        probs = torch.softmax(logits.double() / temperature.double()[:, None], -1)
        easy = ((top_k > 0) & (top_k <= 32)) | (probs.topk(32, -1).values.sum(-1) >= top_p.double())
        assert 8 <= int(easy.sum()) < n
        alone = sample_tokens(logits[easy], temperature[easy], top_k[easy], top_p[easy], u[easy], head=32)
        assert torch.equal(alone, full[easy])


def test_a_wide_top_k_keeps_exactly_its_k_tokens_at_their_probabilities_whatever_the_batch():
    """A row keeping thousands of tokens (DALLE-pytorch's default top-k) draws past its k-th
    largest logit without a sort: only its k most likely tokens (ties included by index), at
    their renormalised probabilities, and the same token for the same uniform alone or beside
    rows that draw the other way."""
    from tessera.ops.sampling import WIDE_K

    torch.manual_seed(4)
    V, k = 8192, 5772
    logits = torch.randn(3, V).to(torch.bfloat16).float()  # bfloat16 logits: many exact ties
    kept = logits[0].topk(k).indices
    u = torch.rand(4000, dtype=torch.float64)
    n = len(u)
    picks = sample_tokens(logits[:1].expand(n, V), torch.ones(n), torch.full((n,), k), torch.ones(n), u)
    assert set(picks.tolist()) <= set(kept.tolist()) and k > WIDE_K
    # the k-th largest value is tied in bfloat16: exactly k tokens are kept, not every tie
    thr = logits[0].kthvalue(V - k + 1).values
    assert int((logits[0] == thr).sum()) > 1
    # frequencies follow the renormalised top-k probabilities: the 50 most likely tokens' share
    p = torch.zeros(V, dtype=torch.float64)
    p[kept] = torch.softmax(logits[0, kept].double(), -1)
    top50 = p.topk(50).indices
    share = torch.isin(picks, top50).double().mean()
    assert abs(float(share) - float(p[top50].sum())) < 0.03
    # beside narrow rows (top-k 5, top-p 0.9) a wide row picks what it picks alone
    mixed = sample_tokens(logits, torch.ones(3), torch.tensor([k, 5, 0]), torch.tensor([1.0, 1.0, 0.9]), u[:3])
    alone = sample_tokens(logits[:1], torch.ones(1), torch.tensor([k]), torch.ones(1), u[:1])
    assert int(mixed[0]) == int(alone[0])
    narrow = sample_tokens(logits[1:], torch.ones(2), torch.tensor([5, 0]), torch.tensor([1.0, 0.9]), u[1:3])
    assert mixed[1:].tolist() == narrow.tolist()
