"""The min-dalle family against min-dalle 0.4.11 itself (tiny models built with its classes)."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from tests.ops.families.tessera.test_transformer import run_to_end

from tessera.ops.families.base import (ImageDecoder, ModelLoadError, ModelSpec, PromptError, PromptTokenizer,
                                       RowCache, SamplingModel)
from tessera.ops.families.min_dalle import is_min_dalle_dir, load
from tessera.ops.families.min_dalle.model import START_TOKEN, heads_for

from tessera.bench.references import import_min_dalle

from .conftest import EMBED, GLU, HEADS, LAYERS, TEXT_VOCAB, build_root

PROMPT_A = "a photo of the cat sitting on the mat"
PROMPT_B = "Avocado 🐶 armchair in the shape of an avocado, at night"
SCALE = 16.0
V = 2 ** 14


def test_bundle_reads_every_dimension_from_the_weights(bundle):
    d = bundle.details
    assert (bundle.kind, bundle.name) == ("min-dalle", "dalle_bart_mini")
    assert (d["layers"], d["encoder_layers"], d["embed"], d["heads"], d["glu"]) == (LAYERS, LAYERS, EMBED, HEADS, GLU)
    assert (d["text_vocab"], d["text_len"], d["image_vocab"], d["decoder_vocab"]) == (TEXT_VOCAB, 64, V, V + 1)
    assert d["precision"] == "float32" and d["weights_bytes"] > 0
    m = bundle.transformer
    assert (m.text_len, m.image_len, m.image_vocab) == (64, 256, V)
    assert m.decoder.lm_head.weight.shape == (V, EMBED)  # only the image tokens' rows are kept
    assert isinstance(m, SamplingModel) and isinstance(bundle.tokenizer, PromptTokenizer)
    assert isinstance(bundle.dvae, ImageDecoder) and isinstance(m.new_cache(2, "cpu", torch.float32), RowCache)
    assert (bundle.sampling.top_k, bundle.sampling.guidance_scale, bundle.clip) == (256, 16.0, None)
    assert bundle.tokenizer.name == f"BART BPE ({len(bundle.tokenizer.vocab)} tokens)"


def _offline(monkeypatch, md):
    """requests.get for MinDalle: its init_tokenizer pings config.json whatever is on disk (the
    reply is discarded); any real download fails the test."""
    fetched = []

    def get(url, *args, **kwargs):
        fetched.append(url)
        if url.endswith("config.json"):
            return None
        raise AssertionError(f"min-dalle tried to download {url}")

    monkeypatch.setattr(md.requests, "get", get)
    return fetched


@pytest.mark.parametrize("is_mega", [True, False])
def test_head_count_matches_min_dalles_constants(oracle, tmp_path, monkeypatch, is_mega):
    """Heads cannot be read from shapes; embed // 64 is what MinDalle itself sets for mega and mini."""
    md = import_min_dalle().min_dalle
    _offline(monkeypatch, md)
    name = "dalle_bart_mega" if is_mega else "dalle_bart_mini"
    (tmp_path / name).mkdir()
    for f in ("vocab.json", "merges.txt"):
        os.symlink(oracle.root / "dalle_bart_mini" / f, tmp_path / name / f)
    dalle = md.MinDalle(models_root=str(tmp_path), device="cpu", is_mega=is_mega, is_reusable=False,
                        is_verbose=False)  # reads the tokenizer only
    assert heads_for(dalle.embed_count) == dalle.attention_head_count == (32 if is_mega else 16)


def test_encoder_matches_min_dalle(oracle, bundle):
    tok = bundle.tokenizer
    text = torch.tensor([tok.encode_prompt(PROMPT_A).ids, tok.encode_prompt(PROMPT_B).ids])
    with torch.no_grad():
        want = oracle.encoder(text)  # min-dalle's encoder takes batches of 2 only
    got = bundle.transformer.encode(text)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def _min_dalle_trace(oracle, prompts: list[list[int]], steps: int = 256):
    """min-dalle's decoder driven as generate_raw_image_stream drives it, with one image per prompt
    in one batch laid out as it lays out a grid's: [uncond of each image; cond of each image], one
    token a step at position i, greedy on uncond*(1-s) + cond*s. (Its encoder takes batches of two
    rows only, so each prompt's [uncond, cond] pair is encoded alone.)
    Returns, per prompt, the (steps, 2 [uncond, cond], V) logits and the (steps,) picks."""
    texts = []
    for ids in prompts:
        text = torch.ones(2, 64, dtype=torch.long)
        n = ids.index(1) if 1 in ids else 64
        text[0, :2] = torch.tensor([ids[0], ids[n - 1]])
        text[1, :n] = torch.tensor(ids[:n])
        texts.append(text)
    g = len(prompts)
    with torch.no_grad():
        states = [oracle.encoder(t) for t in texts]
        order = [(p, 0) for p in range(g)] + [(p, 1) for p in range(g)]
        state = torch.stack([states[p][k] for p, k in order])
        text = torch.stack([texts[p][k] for p, k in order])
        mask = text.ne(1)[:, None, None, :]
        attn = torch.zeros(LAYERS, 4 * g, 256, EMBED)
        tokens = torch.full((g, 257), START_TOKEN, dtype=torch.long)
        out = torch.zeros(steps, 2 * g, V)
        for i in range(steps):
            logits, attn = oracle.decoder.forward(attention_mask=mask, encoder_state=state, attention_state=attn,
                                                  prev_tokens=tokens[:, [i]], token_index=torch.tensor([i]))
            out[i] = logits[:, -1, :V]
            tokens[:, i + 1] = (out[i, :g] * (1 - SCALE) + out[i, g:] * SCALE).argmax(-1)
    return [(torch.stack([out[:, p], out[:, g + p]], 1), tokens[p, 1:]) for p in range(g)]


def test_decoder_logits_match_min_dalle_every_step(oracle, bundle):
    """Two prompts (different lengths, so different text masks) share every step, each with
    its unconditional row from the empty text's snapshot, as the sampler runs them. Each row's
    logits equal min-dalle's at all 256 steps; the greedy super-conditioned picks agree."""
    tok, model = bundle.tokenizer, bundle.transformer
    ids = [tok.encode_prompt(p).ids for p in (PROMPT_A, PROMPT_B)]
    want = _min_dalle_trace(oracle, ids)

    cache = model.new_cache(4, "cpu", torch.float32)  # slots: A, B, uncond A, uncond B
    scratch = model.new_cache(1, "cpu", torch.float32)
    uncond0 = model.prefill(torch.tensor([tok.empty()]), scratch, torch.tensor([0]))[0]
    cache.fill(2, 4, scratch.snapshot(0))
    cond0 = model.prefill(torch.tensor(ids), cache, torch.tensor([0, 1]))
    steps = [torch.cat([cond0, uncond0.expand(2, -1)])]
    for i in range(255):
        # the next token is min-dalle's pick (teacher forcing), for the cond and uncond slots alike
        step_tokens = torch.stack([want[0][1][i], want[1][1][i]]).repeat(2)
        steps.append(model.decode_step(step_tokens, torch.full((4,), i), cache))
    got = torch.stack(steps)  # (256 steps, 4 slots, V)
    for r, (logits, picks) in enumerate(want):
        for slot, which, label in ((r, 1, "cond"), (r + 2, 0, "uncond")):
            err = (got[:, slot] - logits[:, which]).abs().amax(-1)  # per step
            assert err.max() <= 1e-4, f"row {r} {label}: step {int(err.argmax())} off by {float(err.max()):.2e}"
        mixed = got[:, r + 2] * (1 - SCALE) + got[:, r] * SCALE
        mixed_want = logits[:, 0] * (1 - SCALE) + logits[:, 1] * SCALE
        err = (mixed - mixed_want).abs().amax(-1)
        assert err.max() <= 1e-4 * 2 * SCALE, f"row {r} mixed: step {int(err.argmax())} off by {float(err.max()):.2e}"
        top2 = mixed_want.topk(2, dim=-1).values
        clear = top2[:, 0] - top2[:, 1] > 1e-3  # no near-tie: the greedy pick is the same
        assert clear.sum() > 200
        assert torch.equal(mixed.argmax(-1)[clear], picks[clear])


def test_copy_rows_and_fill_carry_a_row(oracle, bundle):
    """A row moved to another slot (copy_rows, as an eviction does) continues bit for bit."""
    tok, model = bundle.tokenizer, bundle.transformer
    ids = torch.tensor([tok.encode_prompt(PROMPT_B).ids])
    a = model.new_cache(3, "cpu", torch.float32)
    model.prefill(ids, a, torch.tensor([2]))
    a.copy_rows([2], [0])
    toks = [5, 77, 16000]
    for i, t in enumerate(toks):
        out_a = model.decode_step(torch.tensor([t]), torch.tensor([i]), a)
    b = model.new_cache(1, "cpu", torch.float32)
    model.prefill(ids, b, torch.tensor([0]))
    for i, t in enumerate(toks):
        out_b = model.decode_step(torch.tensor([t]), torch.tensor([i]), b)
    torch.testing.assert_close(out_a, out_b, atol=0, rtol=0)


@pytest.mark.slow  # two 256-token decodes and min-dalle's VQGAN: about 50 s on 2 cores
def test_greedy_image_equals_min_dalle_generate_image(oracle, bundle, monkeypatch):
    md = import_min_dalle().min_dalle
    fetched = _offline(monkeypatch, md)
    # is_reusable=False: the constructor reads only the tokenizer; the tiny dimensions are set
    # before its init_* read our files (MinDalle hardcodes mega's / mini's)
    dalle = md.MinDalle(models_root=str(oracle.root), dtype=torch.float32, device="cpu", is_mega=False,
                        is_reusable=False, is_verbose=False)
    dalle.layer_count, dalle.attention_head_count, dalle.embed_count = LAYERS, HEADS, EMBED
    dalle.glu_embed_count, dalle.text_vocab_count, dalle.image_vocab_count = GLU, TEXT_VOCAB, V
    dalle.init_encoder()
    dalle.init_decoder()
    dalle.init_detokenizer()
    dalle.is_reusable = True
    grad = torch.is_grad_enabled()
    image = np.asarray(dalle.generate_image(PROMPT_A, seed=7, grid_size=1, top_k=1, supercondition_factor=16))
    torch.set_grad_enabled(grad)
    assert all(u.endswith("config.json") for u in fetched)
    assert image.shape == (256, 256, 3)

    tok, model = bundle.tokenizer, bundle.transformer
    cache = model.new_cache(2, "cpu", torch.float32)
    scratch = model.new_cache(1, "cpu", torch.float32)
    uncond = model.prefill(torch.tensor([tok.empty()]), scratch, torch.tensor([0]))[0]
    cache.fill(1, 2, scratch.snapshot(0))
    cond = model.prefill(torch.tensor([tok.encode_prompt(PROMPT_A).ids]), cache, torch.tensor([0]))[0]
    picks = []
    for i in range(256):
        picks.append(int((uncond * (1 - SCALE) + cond * SCALE).argmax()))
        if i < 255:
            cond, uncond = model.decode_step(torch.tensor([picks[-1]] * 2), torch.tensor([i, i]), cache)
    pixels = bundle.dvae.pixels(torch.tensor([picks]))
    assert pixels.shape == (1, 256, 256, 3) and pixels.dtype == torch.uint8
    diff = np.abs(pixels[0].numpy().astype(int) - image.astype(int))
    assert diff.max() <= 1, f"{(diff > 1).sum()} pixels differ by more than 1/255"
    assert 10 < image.mean() < 245  # not an all-clipped image: the comparison means something


LONG = " ".join(["the cat sat on the mat with a hat"] * 8)


@pytest.mark.parametrize("text", [
    "a photo of the cat", "A Photo OF the   Cat!", "I ❤️ my 🐶 and 😍", "café crème brûlée naïve",
    "zebra quiz 1987 xylophone", "", "   ", "日本語 only", LONG, "tab\tand\nnewline"])
def test_tokenizer_matches_min_dalle(oracle, bundle, text):
    want = oracle.tokenizer.tokenize(text)
    tok = bundle.tokenizer
    assert tok.tokenize(text) == want
    if len(want) <= 2:
        with pytest.raises(PromptError):
            tok.encode_prompt(text)
        return
    enc = tok.encode_prompt(text)
    assert len(enc.ids) == 64
    cut = want[:64]  # generate_raw_image_stream's cut
    assert enc.ids == cut + [1] * (64 - len(cut))
    if len(want) > 64:
        assert enc.notes == [f"prompt cut to 64 tokens ({len(want)} before)"]
    else:
        assert enc.notes == []
    assert tok.empty() == [0, 2] + [1] * 62 and tok.unknown_words(text) == []


def test_over_long_prompt_is_cut_with_a_note(bundle):
    enc = bundle.tokenizer.encode_prompt(LONG)
    assert len(enc.ids) == 64 and 1 not in enc.ids and enc.notes and enc.notes[0].startswith("prompt cut to 64")


def test_is_min_dalle_dir(oracle, tmp_path):
    assert is_min_dalle_dir(oracle.root) and is_min_dalle_dir(oracle.root / "dalle_bart_mini")
    assert not is_min_dalle_dir(tmp_path) and not is_min_dalle_dir(tmp_path / "absent")


@pytest.mark.parametrize("missing", ["dalle_bart_mini/encoder.pt", "dalle_bart_mini/decoder.pt",
                                     "dalle_bart_mini/vocab.json", "dalle_bart_mini/merges.txt",
                                     "vqgan/detoker.pt"])
def test_missing_file_names_it(oracle, tmp_path, missing):
    for sub in ("dalle_bart_mini", "vqgan"):
        (tmp_path / sub).mkdir()
        for f in os.listdir(oracle.root / sub):
            if f"{sub}/{f}" != missing:
                os.symlink(oracle.root / sub / f, tmp_path / sub / f)
    with pytest.raises(ModelLoadError) as e:
        load(ModelSpec(path=str(tmp_path)), "cpu", torch.float32)
    msg = str(e.value)
    assert str(tmp_path / missing) in msg and "kuprel/min-dalle" in msg and "is_mega=False" in msg


def test_mega_layout_in_bfloat16(tmp_path, detoker_file, caplog):
    """A dalle_bart_mega directory loads under its name in a half dtype, the VQGAN too; the weight
    memory is logged once, in that dtype, before the model is built, with the files' folder (for
    the log, not for clients); a step runs in that dtype."""
    root = build_root(tmp_path, detoker_file, name="dalle_bart_mega", seed=3)
    with caplog.at_level(logging.INFO, logger="tessera.ops.min_dalle"):
        b = load(ModelSpec(path=str(root)), "cpu", torch.bfloat16)
        f = load(ModelSpec(path=str(root)), "cpu", torch.float32)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("GiB as bfloat16" in ln for ln in lines) == 1 and not any("fp16" in ln for ln in lines)
    assert any(str(root) in ln for ln in lines) and str(root) not in str(b.details)
    assert b.name == "dalle_bart_mega" and b.transformer.decoder.lm_head.weight.dtype == torch.bfloat16
    assert b.dvae.embedding.weight.dtype == torch.bfloat16 and b.dvae.channels_last
    assert 2 * b.details["weights_bytes"] == f.details["weights_bytes"] and b.details["precision"] == "bfloat16"
    m = b.transformer
    cache = m.new_cache(2, "cpu", torch.bfloat16)
    first = m.prefill(torch.tensor([b.tokenizer.encode_prompt(PROMPT_A).ids, b.tokenizer.empty()]), cache,
                      torch.tensor([0, 1]))
    nxt = m.decode_step(first.argmax(-1), torch.zeros(2, dtype=torch.long), cache)
    assert nxt.shape == (2, V) and torch.isfinite(nxt.float()).all()


def _run_sampler(bundle, monkeypatch, rows_by_step, capacity=4, **settings):
    """The shared SampleOp over this bundle: rows_by_step[i] join before step i; run to the end."""
    from tessera.ops.sample import SampleOp
    monkeypatch.setattr("tessera.ops.shared.hold_bundle", lambda *a, **k: (bundle, None))  # held by no one
    op = SampleOp(**settings)
    op.capacity = capacity
    op.setup("cpu")
    return run_to_end(op, rows_by_step)


def test_shared_sampler_greedy_guided_equals_min_dalle_and_buckets_change_nothing(oracle, bundle, monkeypatch):
    """Through the real sampler (snapshot/fill of the empty text, copy_rows on joins and evictions,
    rows of different prompts at different positions in one step): a greedy row with guidance 16
    picks min-dalle's tokens, and padded decode buckets sample exactly the eager tokens."""
    from tessera.ops.messages import CandidateRow, Sampling
    from tessera.server.engine import StepRow
    tok = bundle.tokenizer
    a, b = tok.encode_prompt(PROMPT_A).ids, tok.encode_prompt(PROMPT_B).ids

    def row(key, ids, seed, **kw):
        s = Sampling(kw.get("temperature", 1.0), kw.get("top_k", 256), 1.0, kw.get("guidance", 16.0))
        return StepRow(key, CandidateRow(ids, seed, 0, s))

    steps = [[row("a", a, 1, top_k=1)], [], [row("b", b, 2)], [row("c", a, 3, guidance=1.0, temperature=0.9)]]
    eager = _run_sampler(bundle, monkeypatch, steps, decode_mode="off")
    (_, picks_a), = _min_dalle_trace(oracle, [a])
    assert eager["a"] == picks_a.tolist()
    padded = _run_sampler(bundle, monkeypatch, steps, decode_mode="padded", decode_buckets=[2, 4, 8])
    assert padded == eager


def test_weights_that_do_not_fit_are_refused_before_they_are_allocated(oracle, monkeypatch):
    import tessera.ops.families.min_dalle as family
    from tessera.ops.families.base import ModelLoadError, ModelSpec
    from tessera.server.engine.platforms.cpu import CpuCompute
    monkeypatch.setattr(CpuCompute, "free_memory", lambda self: 1024)
    monkeypatch.setattr(family, "build_model", lambda *a, **k: pytest.fail("allocated the weights"))
    with pytest.raises(ModelLoadError, match=r"weights need .* GiB as float32 and 0\.0 GiB is free on cpu"):
        family.load(ModelSpec(path=str(oracle.root)), "cpu", torch.float32)


def test_the_speed_note_is_only_for_the_published_shapes(bundle):
    """GetInfo quotes DALL·E Mini's and Mega's measured speeds only for a model of their shape,
    never for a small model kept in their layout."""
    from dataclasses import replace

    import tessera.ops.families.min_dalle as family

    cfg = bundle.transformer.cfg  # 2 layers, 128 wide
    assert not family._is_published(cfg, "dalle_bart_mini") and "on_a_cpu" not in bundle.details
    assert family._is_published(replace(cfg, decoder_layers=12, embed=1024), "dalle_bart_mini")
    assert family._is_published(replace(cfg, decoder_layers=24, embed=2048), "dalle_bart_mega")
    assert not family._is_published(replace(cfg, decoder_layers=24, embed=2048), "dalle_bart_mini")
    assert "Mega" in family.CPU_GUIDE["dalle_bart_mega"] and "Mini" in family.CPU_GUIDE["dalle_bart_mini"]
