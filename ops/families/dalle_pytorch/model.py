"""DALLE-pytorch's transformer (dalle_pytorch 1.6.6's DALLE) with a preallocated per-row cache.

Layout of one sequence (positions), as DALLE.forward builds it:
    0                               <bos> (text id 0)
    1 .. text_seq_len               text ids, 0 mapped to the unique padding id of its position
    text_len .. text_len+image_len-2  image tokens 0 .. image_len-2 (text_len = text_seq_len + 1)
The output at position text_len-1+i predicts image token i; only the image rows of to_logits
are computed (logits width image_vocab = num_image_tokens).

Each layer is x += LayerScale(PreNorm(attn)); x += LayerScale(PreNorm(ff)) (or the reversible
pair y1 = x1 + f(x2), y2 = x2 + g(y1) on x duplicated, averaged at the end). With shift_tokens
the normalised input of each sublayer is shifted before it (PreShiftToken: half the channels
from the previous text position; for image tokens a quarter from the token above and a
quarter from the token to the left), so the cache keeps, per row and sublayer, a ring of the
last image_fmap_size normalised inputs (those two quarters only). axial_row, axial_col and
conv_like attention are full attention under a boolean mask computed once (equal to what
DALLE-pytorch's sparse classes compute in a full forward).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tessera.ops.families.base import ModelLoadError, attend, copy_slots, fill_prefix, live_length, snapshot_prefix
from tessera.ops.families.dalle_pytorch.checkpoint import DalleHparams, sublayer, sublayer_prefixes


# -- masks and positions ---------------------------------------------------------------------

def attention_mask(kind: str, text_len: int, fmap: int, kernel_size: int = 5, dilation: int = 1) -> torch.Tensor:
    """(S, S) bool, True where query i may attend key j; S = text_len + fmap**2 - 1."""
    img = fmap * fmap
    n = text_len + img  # the sparse classes pad to a full grid; the pad position is cut below
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    if kind == "full":
        return causal[: n - 1, : n - 1]
    m = torch.zeros(n, n, dtype=torch.bool)
    m[:text_len, :text_len] = causal[:text_len, :text_len]  # text: causal over text
    m[text_len:, :text_len] = True                           # image: all of the text
    r, c = torch.arange(img) // fmap, torch.arange(img) % fmap
    dr, dc = r[:, None] - r[None, :], c[:, None] - c[None, :]  # query minus key
    if kind == "axial_row":    # same row, keys to the left (and itself)
        im = (dr == 0) & (dc >= 0)
    elif kind == "axial_col":  # same column, keys above (and itself)
        im = (dc == 0) & (dr >= 0)
    elif kind == "conv_like":  # the causal kernel_size x kernel_size window ending at the query
        span = (kernel_size - 1) * dilation
        im = ((dr >= 0) & (dr <= span) & (dr % dilation == 0)
              & (dc >= 0) & (dc <= span) & (dc % dilation == 0))
    else:
        raise ValueError(f"attention type {kind!r}")
    m[text_len:, text_len:] = im
    return m[: n - 1, : n - 1]


def rotary_table(text_len: int, fmap: int, dim_head: int) -> torch.Tensor:
    """DALLE-pytorch's Transformer.pos_emb (rotary_embedding_torch's freqs), (text_len + fmap**2, R),
    for checkpoints that lack the saved buffer."""
    rot = dim_head // 3
    img = fmap * fmap

    def lang(t):   # RotaryEmbedding(rot), freqs_for='lang'
        f = 1.0 / (10000 ** (torch.arange(0, rot, 2)[: rot // 2].float() / rot))
        return (t.float()[:, None] * f).repeat_interleave(2, dim=-1)

    def pixel(t):  # RotaryEmbedding(rot, freqs_for='pixel'), max_freq 10
        f = torch.linspace(1.0, 10 / 2, rot // 2) * math.pi
        return (t.float()[:, None] * f).repeat_interleave(2, dim=-1)

    text_freqs = torch.cat([lang(torch.arange(text_len)), lang(torch.full((img,), 8192))])
    axial = pixel(torch.linspace(-1, 1, steps=fmap))                     # (fmap, r)
    img_freqs = torch.cat([axial[:, None].expand(fmap, fmap, -1),
                           axial[None, :].expand(fmap, fmap, -1)], dim=-1).reshape(img, -1)
    text_axial = pixel(torch.full((text_len,), -10.0))
    img_freqs = torch.cat([torch.cat([text_axial, text_axial], dim=-1), img_freqs])
    return torch.cat([text_freqs, img_freqs], dim=-1)


def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """rotary_embedding_torch.apply_rotary_emb on the first R channels (pairs interleaved)."""
    R = cos.shape[-1]
    x, rest = t[..., :R], t[..., R:]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    half = torch.stack((-x2, x1), dim=-1).flatten(-2)
    return torch.cat([x * cos + half * sin, rest], dim=-1)


def stable_softmax(t: torch.Tensor, dim: int = -1, alpha: float = 32 ** 2) -> torch.Tensor:
    t = t / alpha
    t = t - torch.amax(t, dim=dim, keepdim=True)
    return (t * alpha).softmax(dim=dim)


# -- the cache --------------------------------------------------------------------------------

class DalleRowCache:
    """Per slot: keys and values of every layer over the whole sequence, and (shift_tokens) a
    ring of the last image_fmap_size [top; left] quarters of each sublayer's normalised input.

    k[l], v[l]: (slots, heads, S, dim_head); ring[j]: (slots, fmap, top + left) for sublayer j
    (2 per layer). The ring is written by decode steps only and read only where written, so
    a snapshot (what prefill wrote) is the keys and values of the text positions."""

    def __init__(self, hp: DalleHparams, slots: int, device: str | torch.device, dtype: torch.dtype):
        S = hp.text_len + hp.image_len - 1
        shape = (slots, hp.heads, S, hp.dim_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(hp.depth)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(hp.depth)]
        q = [c.shape[-1] for c in torch.zeros(hp.dim).chunk(4)]
        width = q[0] + q[1]
        self.ring = ([torch.zeros(slots, hp.image_fmap_size, width, device=device, dtype=dtype)
                      for _ in range(2 * hp.depth)] if hp.shift_tokens else [])
        self.text_len = hp.text_len
        self.slots = slots
        self.device = self.k[0].device

    def _all(self) -> list[torch.Tensor]:
        return self.k + self.v + self.ring

    def copy_rows(self, src: list[int], dst: list[int]) -> None:
        copy_slots(self._all(), src, dst)

    def snapshot(self, slot: int) -> Any:
        return snapshot_prefix(self.k, self.v, slot, self.text_len)

    def fill(self, start: int, end: int, snapshot: Any) -> None:
        fill_prefix(self.k, self.v, start, end, snapshot)


class _Step:
    """Where a decode step's rows sit, built once for all layers."""

    def __init__(self, index: torch.Tensor, text_len: int, fmap: int):
        n = index.shape[0]
        self.pos = index + text_len                          # absolute position, (n,)
        self.rows = torch.arange(n, device=index.device)     # row i is slot i
        self.ring_at = index % fmap                          # this token's ring entry
        self.left_at = (index - 1) % fmap
        self.has_top = (index >= fmap)[:, None]              # (n, 1)
        self.has_left = (index % fmap != 0)[:, None]


# -- layers -----------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, hp: DalleHparams):
        super().__init__()
        self.heads, self.dim_head, self.stable = hp.heads, hp.dim_head, hp.stable
        inner = hp.heads * hp.dim_head
        self.to_qkv = nn.Linear(hp.dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, hp.dim)

    def _qkv(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = self.to_qkv(x).view(B, T, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        if cos is not None:  # DALLE-pytorch rotates q, k and v
            q, k, v = rotate(q, cos, sin), rotate(k, cos, sin), rotate(v, cos, sin)
        return q, k, v  # each (B, heads, T, dim_head)

    def _attend(self, q, k, v, visible):
        if not self.stable:
            return attend(q, k, v, visible)  # base.py: exact over a live prefix, batch-invariant
        dots = (q * self.dim_head ** -0.5) @ k.transpose(-1, -2)
        dots = dots.masked_fill(~visible, -torch.finfo(dots.dtype).max)
        return stable_softmax(dots) @ v

    def forward(self, x, cos, sin, mask, cache: DalleRowCache, layer: int, slots: torch.Tensor):
        """A prefix from position 0, (B, T, dim); fills cache[slots] at 0..T-1."""
        B, T, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        cache.k[layer][slots, :, :T] = k
        cache.v[layer][slots, :, :T] = v
        y = self._attend(q, k, v, mask[:T, :T])
        return self.to_out(y.transpose(1, 2).reshape(B, T, -1))

    def step(self, x, cos, sin, visible, cache: DalleRowCache, layer: int, at: _Step):
        """One token per row, (n, 1, dim); row i in slot i at position at.pos[i], seeing the
        positions `visible` (n, 1, 1, S) marks."""
        n = x.shape[0]
        q, k, v = self._qkv(x, cos, sin)                   # (n, heads, 1, dim_head)
        cache.k[layer][at.rows, :, at.pos] = k[:, :, 0]
        cache.v[layer][at.rows, :, at.pos] = v[:, :, 0]
        live = visible.shape[-1]  # the cache's live prefix (decode_step)
        y = self._attend(q, cache.k[layer][:n, :, :live], cache.v[layer][:n, :, :live], visible)
        return self.to_out(y.transpose(1, 2).reshape(n, 1, -1))


class FeedForward(nn.Module):  # Linear -> GEGLU -> Linear
    def __init__(self, hp: DalleHparams):
        super().__init__()
        self.fc = nn.Linear(hp.dim, hp.dim * hp.ff_mult * 2)
        self.proj = nn.Linear(hp.dim * hp.ff_mult, hp.dim)

    def forward(self, x, *args):
        x, gates = self.fc(x).chunk(2, dim=-1)
        return self.proj(x * F.gelu(gates))

    step = forward


class Sublayer(nn.Module):
    """LayerScale(PreNorm(PreShiftToken(fn))), sandwich norm optional; fn is shared or not."""

    def __init__(self, hp: DalleHparams, fn: nn.Module, ring: int):
        super().__init__()
        self.norm = nn.LayerNorm(hp.dim)
        self.norm_out = nn.LayerNorm(hp.dim) if hp.sandwich_norm else nn.Identity()
        self.scale = nn.Parameter(torch.ones(1, 1, hp.dim))
        self.fn = fn
        self.shift, self.ring = hp.shift_tokens, ring

    def forward(self, x, *args):
        h = self.norm(x)                                   # (B, T, dim), T <= text_len
        if self.shift:  # text: half the channels from the previous position
            a, b = h.chunk(2, dim=-1)
            h = torch.cat([F.pad(a, (0, 0, 1, -1)), b], dim=-1)
        return self.norm_out(self.fn(h, *args)) * self.scale

    def step(self, x, *args, cache: DalleRowCache, at: _Step):
        h = self.norm(x)                                   # (n, 1, dim)
        if self.shift:
            top, left, *rest = h[:, 0].chunk(4, dim=-1)
            ring = cache.ring[self.ring]                   # (slots, fmap, top + left)
            t = top.shape[-1]
            above = ring[at.rows, at.ring_at, :t] * at.has_top      # written fmap steps ago
            before = ring[at.rows, at.left_at, t:] * at.has_left    # written last step
            ring[at.rows, at.ring_at] = torch.cat([top, left], dim=-1)
            h = torch.cat([above, before, *rest], dim=-1)[:, None]
        return self.norm_out(self.fn.step(h, *args)) * self.scale


class DallePytorchModel(nn.Module):
    graphable = False

    def __init__(self, hp: DalleHparams):
        super().__init__()
        self.hp = hp
        self.text_len = hp.text_seq_len           # ids per prompt row (the tokenizer's)
        self.image_len = hp.image_len
        self.image_vocab = hp.num_image_tokens
        self.seq_len = hp.text_len + hp.image_len - 1
        self.text_emb = nn.Embedding(hp.num_text_tokens_total, hp.dim)
        self.image_emb = nn.Embedding(hp.num_image_tokens, hp.dim)
        if hp.rotary_emb:
            self.text_pos_emb = self.image_pos_emb = None
            table = rotary_table(hp.text_len, hp.image_fmap_size, hp.dim_head)[: self.seq_len]
            self.register_buffer("rot_cos", table.cos(), persistent=False)
            self.register_buffer("rot_sin", table.sin(), persistent=False)
        else:
            self.text_pos_emb = nn.Embedding(hp.text_len, hp.dim)
            self.image_pos_emb = nn.Embedding(hp.image_len, hp.dim)  # the axial sum, flattened
        attn_ids = hp.shared_attn_ids or tuple(range(hp.depth))
        ff_ids = hp.shared_ff_ids or tuple(range(hp.depth))
        attns: dict[int, Attention] = {}
        ffs: dict[int, FeedForward] = {}
        self.attn_types = [hp.attn_types[i % len(hp.attn_types)] for i in range(hp.depth)]
        layers = []
        for i in range(hp.depth):
            a = attns.setdefault(attn_ids[i % len(attn_ids)], Attention(hp))
            f = ffs.setdefault(ff_ids[i % len(ff_ids)], FeedForward(hp))
            layers.append(nn.ModuleList([Sublayer(hp, a, 2 * i), Sublayer(hp, f, 2 * i + 1)]))
        self.layers = nn.ModuleList(layers)
        for kind in set(self.attn_types):
            self.register_buffer(f"mask_{kind}", attention_mask(kind, hp.text_len, hp.image_fmap_size),
                                 persistent=False)
        self.norm = nn.LayerNorm(hp.dim)
        self.head = nn.Linear(hp.dim, hp.num_image_tokens)  # to_logits' image rows

    # -- weights --------------------------------------------------------------------------
    def load_dalle_state(self, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
        """Copy DALLE.state_dict()'s tensors in (every shared module from its first layer)."""
        hp = self.hp
        ntt = hp.num_text_tokens_total

        def put(dst: torch.Tensor, value: torch.Tensor, what: str):
            if tuple(dst.shape) != tuple(value.shape):
                raise ModelLoadError(f"{source}: {what} is {tuple(value.shape)}, expected {tuple(dst.shape)}")
            with torch.no_grad():
                dst.copy_(value)

        def need(key):
            if key not in state:
                raise ModelLoadError(f"{source}: the weights lack {key!r}")
            return state[key]

        head_w, head_b = need("to_logits.1.weight"), need("to_logits.1.bias")
        put(self.norm.weight, need("to_logits.0.weight"), "to_logits.0.weight")
        put(self.norm.bias, need("to_logits.0.bias"), "to_logits.0.bias")
        put(self.head.weight, head_w[ntt:], "to_logits.1.weight[image rows]")
        put(self.head.bias, head_b[ntt:], "to_logits.1.bias[image rows]")
        if hp.share_input_output_emb:  # SharedEmbedding: slices of to_logits' weight
            put(self.text_emb.weight, head_w[:ntt], "to_logits.1.weight[text rows]")
            put(self.image_emb.weight, head_w[ntt:], "to_logits.1.weight[image rows]")
        else:
            put(self.text_emb.weight, need("text_emb.weight"), "text_emb.weight")
            put(self.image_emb.weight, need("image_emb.weight"), "image_emb.weight")
        if hp.rotary_emb:
            if "transformer.pos_emb" in state:  # the saved table is what DALLE itself uses
                table = state["transformer.pos_emb"].reshape(-1, state["transformer.pos_emb"].shape[-1])
                if table.shape[0] < self.seq_len or table.shape[1] > hp.dim_head:
                    raise ModelLoadError(f"{source}: transformer.pos_emb is {tuple(table.shape)}, "
                                         f"too short for {self.seq_len} positions")
                table = table[: self.seq_len].to(self.rot_cos.device, torch.float32)
                self.rot_cos, self.rot_sin = table.cos(), table.sin()
        else:
            put(self.text_pos_emb.weight, need("text_pos_emb.weight"), "text_pos_emb.weight")
            w0, w1 = need("image_pos_emb.weights.0"), need("image_pos_emb.weights.1")  # (1,H,1,d), (1,1,W,d)
            fm = hp.image_fmap_size
            axial = (w0.expand(1, fm, fm, hp.dim) + w1.expand(1, fm, fm, hp.dim)).reshape(fm * fm, hp.dim)
            put(self.image_pos_emb.weight, axial, "image_pos_emb")
        _, prefixes = sublayer_prefixes(state)
        loaded: set[int] = set()
        for i, (pa, pf) in enumerate(prefixes):
            for sub, prefix in zip(self.layers[i], (pa, pf)):
                leaves, _ = sublayer(state, prefix)

                def leaf(name, _leaves=leaves, _prefix=prefix):
                    if name not in _leaves:
                        raise ModelLoadError(f"{source}: the weights lack {_prefix}...{name}")
                    return _leaves[name]
                put(sub.norm.weight, leaf("norm.weight"), prefix + "norm.weight")
                put(sub.norm.bias, leaf("norm.bias"), prefix + "norm.bias")
                if hp.sandwich_norm:
                    put(sub.norm_out.weight, leaf("norm_out.weight"), prefix + "norm_out.weight")
                    put(sub.norm_out.bias, leaf("norm_out.bias"), prefix + "norm_out.bias")
                if hp.layer_scale:
                    put(sub.scale, leaf("scale"), prefix + "scale")
                if id(sub.fn) in loaded:
                    continue
                loaded.add(id(sub.fn))
                if isinstance(sub.fn, Attention):
                    put(sub.fn.to_qkv.weight, leaf("to_qkv.weight"), prefix + "to_qkv.weight")
                    put(sub.fn.to_out.weight, leaf("to_out.0.weight"), prefix + "to_out.0.weight")
                    put(sub.fn.to_out.bias, leaf("to_out.0.bias"), prefix + "to_out.0.bias")
                else:
                    put(sub.fn.fc.weight, leaf("net.0.weight"), prefix + "net.0.weight")
                    put(sub.fn.fc.bias, leaf("net.0.bias"), prefix + "net.0.bias")
                    put(sub.fn.proj.weight, leaf("net.3.weight"), prefix + "net.3.weight")
                    put(sub.fn.proj.bias, leaf("net.3.bias"), prefix + "net.3.bias")

    # -- the sampler's view ---------------------------------------------------------------
    def new_cache(self, slots: int, device: str | torch.device, dtype: torch.dtype) -> DalleRowCache:
        return DalleRowCache(self.hp, slots, device, dtype)

    def _mask(self, layer: int) -> torch.Tensor:
        return getattr(self, f"mask_{self.attn_types[layer]}")

    def _run(self, x: torch.Tensor, sub_call) -> torch.Tensor:
        """The layer stack: sequential residuals, or the reversible pair averaged at the end."""
        if not self.hp.reversible:
            for i, (f, g) in enumerate(self.layers):
                x = x + sub_call(f, i, x)
                x = x + sub_call(g, i, x)
            return x
        x1 = x2 = x
        for i, (f, g) in enumerate(self.layers):
            x1 = x1 + sub_call(f, i, x2)
            x2 = x2 + sub_call(g, i, x1)
        return (x1 + x2) / 2

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.hp.stable:  # DivideMax
            x = x / x.amax(dim=-1, keepdim=True)
        return self.head(self.norm(x))

    @torch.no_grad()
    def prefill(self, text: torch.Tensor, cache: DalleRowCache, slots: torch.Tensor) -> torch.Tensor:
        """text (G, text_seq_len) long, 0 = padding, into cache[slots]; logits for image token 0, (G, image_vocab)."""
        hp = self.hp
        G, L = text.shape
        if L != hp.text_seq_len:
            raise ValueError(f"prefill: text is {L} ids, the model takes {hp.text_seq_len}")
        pad_ids = torch.arange(L, device=text.device) + (hp.num_text_tokens_total - L)
        text = F.pad(torch.where(text == 0, pad_ids, text), (1, 0), value=0)  # (G, text_len), <bos> first
        x = self.text_emb(text)
        T = text.shape[1]
        cos = sin = None
        if hp.rotary_emb:
            cos, sin = self.rot_cos[:T].to(x.dtype), self.rot_sin[:T].to(x.dtype)
        else:
            x = x + self.text_pos_emb.weight[:T]

        def call(sub, i, h):
            if isinstance(sub.fn, Attention):
                return sub(h, cos, sin, self._mask(i), cache, i, slots)
            return sub(h)
        x = self._run(x, call)
        return self._logits(x[:, -1])

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, index: torch.Tensor, cache: DalleRowCache,
                    last: int | None = None) -> torch.Tensor:
        """Row i (slot i) feeds image token index[i]; logits for token index[i] + 1, (n, image_vocab).
        `last`: the largest index[i] (None: attend over the whole cache)."""
        hp = self.hp
        at = _Step(index, hp.text_len, hp.image_fmap_size)
        x = self.image_emb(tokens)[:, None]  # (n, 1, dim)
        cos = sin = None
        if hp.rotary_emb:
            cos = self.rot_cos[at.pos][:, None, None].to(x.dtype)  # (n, 1, 1, R)
            sin = self.rot_sin[at.pos][:, None, None].to(x.dtype)
        else:
            x = x + self.image_pos_emb(index)[:, None]

        # Each attention type's mask rows for this step's positions, once for all its layers.
        # Only the live prefix of the cache: positions past every row's are masked for each type.
        full = getattr(self, f"mask_{self.attn_types[0]}").shape[-1]
        live = live_length(last, full, hp.text_len)
        visible = {kind: getattr(self, f"mask_{kind}")[at.pos, :live][:, None, None, :]
                   for kind in set(self.attn_types)}

        def call(sub, i, h):
            if isinstance(sub.fn, Attention):
                return sub.step(h, cos, sin, visible[self.attn_types[i]], cache, i, at, cache=cache, at=at)
            return sub.step(h, cache=cache, at=at)
        x = self._run(x, call)
        return self._logits(x[:, 0])


def build_model(hp: DalleHparams, state: dict[str, torch.Tensor], source: str = "the checkpoint",
                meta: bool = False) -> DallePytorchModel:
    """The model with the checkpoint's weights (every key and shape checked). meta: on the meta
    device, with no random init and no weight read (to tokenize or describe the model)."""
    with torch.device("meta") if meta else nullcontext():
        model = DallePytorchModel(hp)
    model.load_dalle_state(state, source)
    return model.eval()
