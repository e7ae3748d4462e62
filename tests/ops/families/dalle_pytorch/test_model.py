"""Our KV-cached DALLE-pytorch transformer against DALLE.forward (dalle_pytorch 1.6.6) itself."""
from __future__ import annotations

import pytest
import torch

from tessera.ops.families.dalle_pytorch.checkpoint import parse_hparams, read_checkpoint
from tessera.ops.families.dalle_pytorch.model import build_model

from .conftest import NUM_TEXT_TOKENS, TEXT_SEQ_LEN


def load_ours(path):
    ckpt = read_checkpoint(path)
    hp = parse_hparams(ckpt)
    return build_model(hp, ckpt["weights"], str(path)), hp


def inputs(dalle, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, NUM_TEXT_TOKENS, (batch, TEXT_SEQ_LEN), generator=g)
    text[0, 5:] = 0                     # padding: the unique padding ids
    if batch > 1:
        text[1, 0] = 0                  # a zero in front too
    image = torch.randint(0, dalle.num_image_tokens, (batch, dalle.image_seq_len), generator=g)
    return text, image


@torch.no_grad()
def reference(dalle, text, image):
    """DALLE.forward's image-token slice: (B, image_len, num_image_tokens)."""
    logits = dalle(text.clone(), image)
    return logits[:, TEXT_SEQ_LEN:, dalle.num_text_tokens:]


@torch.no_grad()
def cached(model, text, image):
    """Prefill then teacher-forced decode steps, every row in its own slot."""
    B = text.shape[0]
    cache = model.new_cache(B, "cpu", torch.float32)
    out = [model.prefill(text, cache, torch.arange(B))]
    for i in range(model.image_len - 1):
        out.append(model.decode_step(image[:, i], torch.full((B,), i), cache))
    return torch.stack(out, dim=1)


OPTIONS = {
    "full": {},
    "axial_row": dict(attn_types=("axial_row",)),
    "axial_col": dict(attn_types=("axial_col",)),
    "conv_like": dict(attn_types=("conv_like",)),
    "mixed_types": dict(attn_types=("full", "axial_row", "axial_col", "conv_like"), depth=4),
    "no_rotary": dict(rotary_emb=False),
    "no_shift": dict(shift_tokens=False),
    "no_rotary_no_shift": dict(rotary_emb=False, shift_tokens=False),
    "stable": dict(stable=True),
    "sandwich_norm": dict(sandwich_norm=True),
    "share_input_output_emb": dict(share_input_output_emb=True),
    "shared_ids": dict(depth=4, attn_types=("full", "axial_row"), shared_attn_ids=(0, 1, 0, 1),
                       shared_ff_ids=(0, 0, 1, 1)),
    "reversible": dict(reversible=True),
    "reversible_axial_no_rotary": dict(reversible=True, rotary_emb=False, attn_types=("axial_col", "full")),
    "odd_dim": dict(dim=34),   # uneven token-shift chunks
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_cached_logits_match_full_forward(make_checkpoint, name):
    path, dalle = make_checkpoint(name, **OPTIONS[name])
    model, hp = load_ours(path)
    assert model.image_vocab == dalle.num_image_tokens and model.text_len == TEXT_SEQ_LEN
    text, image = inputs(dalle)
    ref, ours = reference(dalle, text, image), cached(model, text, image)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_conv_like_window_on_a_larger_grid(make_checkpoint):
    """An 8x8 grid, wider than the 5x5 kernel, so the window's edges matter."""
    path, dalle = make_checkpoint("conv8", image_size=32, attn_types=("conv_like", "axial_row"), dim=32)
    model, hp = load_ours(path)
    assert hp.image_fmap_size == 8
    text, image = inputs(dalle, batch=1)
    torch.testing.assert_close(cached(model, text, image), reference(dalle, text, image), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["full", "no_rotary", "conv_like"])
def test_rows_at_different_positions_are_independent(make_checkpoint, name):
    """Three rows in one batch, each started at a different step: each gets its own logits."""
    path, dalle = make_checkpoint(name, **OPTIONS[name])
    model, _ = load_ours(path)
    text, image = inputs(dalle, batch=3, seed=7)
    ref = reference(dalle, text, image)
    L = model.image_len
    start = [0, 3, 6]  # row r is prefilled at step start[r]
    cache = model.new_cache(3, "cpu", torch.float32)
    got = [[None] * L for _ in range(3)]
    with torch.no_grad():
        for t in range(L + max(start)):
            live = [r for r in range(3) if start[r] <= t]
            for r in live:
                if start[r] == t:
                    got[r][0] = model.prefill(text[r:r + 1], cache, torch.tensor([r]))[0]
            stepping = [r for r in live if start[r] < t and t - start[r] - 1 < L - 1]
            if stepping:  # rows 0..max in slots 0..max; finished or just-prefilled rows feed a
                # dummy (token 0 at index 0), as the sampler's padding rows do: it must not leak
                n = max(stepping) + 1
                idx = torch.tensor([min(t - start[r] - 1, L - 2) if r in stepping else 0 for r in range(n)])
                tok = torch.tensor([image[r, idx[r]] if r in stepping else 0 for r in range(n)])
                out = model.decode_step(tok, idx, cache)
                for r in stepping:
                    got[r][int(idx[r]) + 1] = out[r]
    for r in range(3):
        torch.testing.assert_close(torch.stack(got[r]), ref[r], atol=1e-4, rtol=1e-4)


def test_copy_rows_snapshot_fill(make_checkpoint):
    """A prefill copied to other slots (copy_rows, snapshot/fill) decodes as if prefilled there."""
    path, dalle = make_checkpoint("copy")
    model, _ = load_ours(path)
    text, image = inputs(dalle, batch=1)
    ref = reference(dalle, text, image)[0]
    cache = model.new_cache(4, "cpu", torch.float32)
    with torch.no_grad():
        first = model.prefill(text, cache, torch.tensor([0]))
        cache.copy_rows([0], [1])
        cache.fill(2, 4, cache.snapshot(0))
        out = [first.expand(4, -1)]
        for i in range(model.image_len - 1):
            out.append(model.decode_step(image[0, i].repeat(4), torch.full((4,), i), cache))
    got = torch.stack(out, dim=1)
    for r in range(4):
        torch.testing.assert_close(got[r], ref, atol=1e-4, rtol=1e-4)


def test_old_checkpoint_missing_keys(make_checkpoint):
    """hparams without the newer keys and no saved rotary table: the layout comes from the weights."""
    drop = ("shift_tokens", "rotary_emb", "stable", "shared_attn_ids", "shared_ff_ids",
            "share_input_output_emb", "attn_types", "reversible", "dim_head")
    path, dalle = make_checkpoint("old", shift_tokens=False, dim_head=16, drop_hparams=drop,
                                  drop_weights=("transformer.pos_emb",))
    model, hp = load_ours(path)
    assert (hp.shift_tokens, hp.rotary_emb, hp.dim_head, hp.heads) == (False, True, 16, 2)
    text, image = inputs(dalle)
    torch.testing.assert_close(cached(model, text, image), reference(dalle, text, image), atol=1e-4, rtol=1e-4)


def test_hparams_disagreeing_with_weights_follow_the_weights(make_checkpoint, tmp_path):
    path, dalle = make_checkpoint("lying", rotary_emb=False, shift_tokens=False)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hparams"].update(rotary_emb=True, shift_tokens=True)  # the class defaults, wrong here
    torch.save(ckpt, tmp_path / "lying2.pt")
    model, hp = load_ours(tmp_path / "lying2.pt")
    assert not hp.rotary_emb and not hp.shift_tokens and hp.notes
    text, image = inputs(dalle)
    torch.testing.assert_close(cached(model, text, image), reference(dalle, text, image), atol=1e-4, rtol=1e-4)
