"""The KV-cached path agrees token for token with a full uncached forward."""
from __future__ import annotations

import torch

from tessera.ops.families.tessera.transformer import ImageGPT, KVCache, TransformerConfig
from tessera.ops.messages import CandidateRow, Sampling
from tessera.ops.sample import SampleOp
from tessera.ops.sampling import row_uniforms, sample_tokens
from tessera.server.engine import StepRow


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(text_vocab=50, text_len=6, image_vocab=40, image_len=9,
                            d_model=32, n_layer=2, n_head=4)
    return ImageGPT(cfg).eval()


def reference(model, text, uniforms, temperature=1.0, top_k=0, top_p=1.0):
    """Uncached: the whole sequence re-run for every token."""
    tokens = torch.zeros(1, 0, dtype=torch.long)
    for i in range(model.cfg.image_len):
        logits = model(text[None], torch.cat([tokens, torch.zeros(1, 1, dtype=torch.long)], 1))[:, i]
        tok = sample_tokens(logits, torch.tensor([temperature]), torch.tensor([top_k]),
                            torch.tensor([top_p]), uniforms[i:i + 1])
        tokens = torch.cat([tokens, tok[None]], 1)
    return tokens[0].tolist()


def test_prefill_and_steps_match_full_forward_logits():
    model = tiny()
    text = torch.randint(0, 50, (3, 6))
    image = torch.randint(0, 40, (3, 9))
    with torch.no_grad():
        full = model(text, image)  # (3, 9, V)
    cache = KVCache(model.cfg, 3)
    first = model.prefill(text, cache, torch.arange(3))
    torch.testing.assert_close(first, full[:, 0], atol=1e-5, rtol=1e-4)
    for i in range(1, 9):
        step = model.decode_step(image[:, i - 1], torch.full((3,), i - 1), cache)
        torch.testing.assert_close(step, full[:, i], atol=1e-5, rtol=1e-4)


def test_rows_at_different_positions_share_a_step():
    model = tiny()
    text = torch.randint(0, 50, (2, 6))
    image = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        full = model(text, image)
    cache = KVCache(model.cfg, 2)
    model.prefill(text[:1], cache, torch.tensor([0]))
    for i in range(1, 4):  # row 0 runs ahead alone
        model.decode_step(image[:1, i - 1], torch.tensor([i - 1]), cache)
    model.prefill(text[1:], cache, torch.tensor([1]))  # row 1 joins at position 0
    out = model.decode_step(torch.stack([image[0, 3], image[1, 0]]), torch.tensor([3, 0]), cache)
    torch.testing.assert_close(out[0], full[0, 4], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1], full[1, 1], atol=1e-5, rtol=1e-4)


class _Bundle:
    def __init__(self, model):
        self.transformer, self.kind = model, "tessera"

        class Tok:
            @staticmethod
            def empty():
                return [0] * model.cfg.text_len
        self.tokenizer = Tok()


def sampler(model, capacity=8, **settings):
    op = SampleOp(**settings)
    op.capacity = capacity
    import tessera.ops.shared as sample_mod
    original = sample_mod.hold_bundle
    sample_mod.hold_bundle = lambda *a, **k: (_Bundle(model), None)  # held by no one
    try:
        op.setup("cpu")
    finally:
        sample_mod.hold_bundle = original
    return op


def row(key, text, seed, guidance=1.0, temperature=1.0, top_k=0, top_p=1.0, index=0):
    return StepRow(key, CandidateRow(text, seed, index, Sampling(temperature, top_k, top_p, guidance)))


def run_to_end(op, rows_by_step):
    """Admit rows_by_step[i] before step i; run until every row finished."""
    out, i = {}, 0
    while i < len(rows_by_step) or op.active:
        if i < len(rows_by_step) and rows_by_step[i]:
            op.admit(rows_by_step[i])
        out.update({k: v.tokens.tolist() for k, v in op.step().finished.items()})
        i += 1
    return out


def test_sampler_matches_uncached_reference_token_for_token():
    model = tiny()
    text = [3, 7, 9, 0, 0, 0]
    for seed, kw in ((11, {}), (12, {"top_k": 5}), (13, {"top_p": 0.7, "temperature": 0.8})):
        op = sampler(model)
        got = run_to_end(op, [[row("a", text, seed, **kw)]])["a"]
        assert got == reference(model, torch.tensor(text), row_uniforms(seed, 9), **kw)


def test_rows_joining_mid_run_and_sharing_a_prefix_match_running_alone():
    model = tiny()
    t1, t2 = [3, 7, 9, 0, 0, 0], [5, 5, 1, 2, 0, 0]
    alone = {k: run_to_end(sampler(model), [[row(k, t, s)]])[k]
             for k, t, s in (("a", t1, 1), ("b", t1, 2), ("c", t2, 3), ("d", t2, 4))}
    op = sampler(model, capacity=4)
    # a and b share a prompt (one prefill, copied); c joins at step 2, d at step 5.
    mixed = run_to_end(op, [[row("a", t1, 1), row("b", t1, 2)], [], [row("c", t2, 3)], [], [],
                            [row("d", t2, 4)]])
    assert mixed == alone


def test_guided_and_unguided_rows_share_a_batch_without_changing_each_other():
    model = tiny()
    t = [3, 7, 9, 0, 0, 0]
    alone_g = run_to_end(sampler(model), [[row("g", t, 5, guidance=3.0)]])["g"]
    alone_u = run_to_end(sampler(model), [[row("u", t, 6)]])["u"]
    mixed = run_to_end(sampler(model), [[row("g", t, 5, guidance=3.0), row("u", t, 6)]])
    assert mixed == {"g": alone_g, "u": alone_u}
    # guidance does act: over a few seeds, some image changes (an unfiltered row draws in
    # vocabulary order, where a small change of the distribution seldom moves a pick)
    assert any(run_to_end(sampler(model), [[row("g", t, s, guidance=3.0)]])["g"]
               != run_to_end(sampler(model), [[row("g", t, s)]])["g"] for s in range(5, 10))


def test_eviction_repacks_slots_and_survivors_are_unchanged():
    model = tiny()
    t = [3, 7, 9, 0, 0, 0]
    alone = run_to_end(sampler(model), [[row("keep", t, 9, guidance=2.0)]])["keep"]
    op = sampler(model, capacity=3)
    op.admit([row("x", t, 1, guidance=2.0), row("y", t, 2), row("keep", t, 9, guidance=2.0)])
    op.step()
    op.evict(["x", "y"])  # keep moves from slots (2, 5) down to (0, 1)
    out = run_to_end(op, [])
    assert out == {"keep": alone}
    assert op.active == 0


def test_a_decode_step_reads_the_live_prefix_of_the_cache_in_place(monkeypatch):
    """Told the largest position of its rows, a step attends over the cache's live prefix only
    (a multiple of LIVE_STEP past it), read in place: a view of the live rows and positions, no
    copy. Told nothing (a compiled or captured step), it reads the whole preallocated cache."""
    from tessera.ops.families.base import live_length
    from tessera.ops.families.tessera import transformer

    model = tiny()
    cache = KVCache(model.cfg, 3)
    model.prefill(torch.zeros(3, 6, dtype=torch.long), cache, torch.arange(3))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = transformer.attend

    def spy(q, k, v, visible):
        seen.append((k, v))
        return real(q, k, v, visible)

    monkeypatch.setattr(transformer, "attend", spy)
    n, S = 2, model.cfg.seq_len  # two live rows of three slots: the step reads slots 0..n-1 only
    for index in (0, model.cfg.image_len // 2, model.cfg.image_len - 2):  # the first fed image token to the last
        for last, length in ((index, live_length(index, S, model.cfg.text_len)), (None, S)):
            seen.clear()
            model.decode_step(torch.zeros(n, dtype=torch.long), torch.tensor([index, index]), cache, last)
            assert len(seen) == model.cfg.n_layer and index + model.cfg.text_len < length <= S
            for layer, (k, v) in enumerate(seen):
                for read, whole in ((k, cache.k[layer]), (v, cache.v[layer])):
                    assert read.shape == (n, whole.shape[1], length, whole.shape[3])
                    assert read.data_ptr() == whole.data_ptr() and read.stride() == whole.stride()  # a view


def test_attention_over_the_live_prefix_equals_the_masked_whole_cache():
    """In float32 a step over the live prefix gives the logits of the step over the whole cache
    behind a mask (the issue's bar: 1e-5; the shared attention makes them the same bits), for
    rows at different positions sharing the step."""
    torch.manual_seed(3)
    model = ImageGPT(TransformerConfig(text_vocab=50, text_len=6, image_vocab=40, image_len=80, d_model=32,
                                       n_layer=2, n_head=4)).eval()
    cache = KVCache(model.cfg, 3)
    with torch.no_grad():
        model.prefill(torch.randint(1, 50, (3, 6)), cache, torch.arange(3))
        for i in range(40):  # fill the rows' caches to position 46 with random tokens
            model.decode_step(torch.randint(0, 40, (3,)), torch.tensor([i, i, i]), cache)
        index = torch.tensor([39, 12, 3])
        tokens = torch.randint(0, 40, (3,))
        whole = model.decode_step(tokens, index, cache, None)
        live = model.decode_step(tokens, index, cache, 39)
    assert (live - whole).abs().max() <= 1e-5
    assert torch.equal(live, whole)


def test_evicting_from_the_middle_fills_the_hole_and_every_survivor_is_unchanged():
    model = tiny()
    t1, t2 = [3, 7, 9, 0, 0, 0], [5, 5, 1, 2, 0, 0]
    specs = {"a": (t1, 1, 2.0), "b": (t2, 2, 1.0), "c": (t1, 3, 3.0), "d": (t2, 4, 1.0), "e": (t2, 5, 2.0)}
    alone = {k: run_to_end(sampler(model), [[row(k, t, s, guidance=g)]])[k] for k, (t, s, g) in specs.items()}
    op = sampler(model, capacity=5)
    op.admit([row(k, *specs[k][:2], guidance=specs[k][2]) for k in "abcd"])
    op.step()
    op.evict(["b"])          # a hole at slot 1, and one among the guided slots
    assert len(op.slots) == 2 + 3  # three rows, two of them guided
    out = run_to_end(op, [[row("e", *specs["e"][:2], guidance=2.0)]])
    assert out == {k: alone[k] for k in "acde"}
