"""Decoder-only transformer over [text tokens; image tokens], with a preallocated KV cache.

Layout of one sequence (positions):
    0 .. text_len-1                 text tokens (right-padded with <pad>)
    text_len .. text_len+image_len-2  image tokens 0 .. image_len-2 (the last is never input)
The output at position text_len-1+i predicts image token i, so image positions predict
only image tokens: the head's vocabulary is the dVAE codebook alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tessera.ops.families.base import attend, copy_slots, fill_prefix, live_length, snapshot_prefix


@dataclass
class TransformerConfig:
    text_vocab: int = 1024
    text_len: int = 32
    image_vocab: int = 1024
    image_len: int = 64      # 8 x 8 dVAE grid
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for key in ("text_vocab", "text_len", "image_vocab", "image_len", "d_model", "n_layer", "n_head"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")

    @property
    def seq_len(self) -> int:
        return self.text_len + self.image_len - 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class KVCache:
    """Keys and values for `slots` rows over the full sequence, allocated once.

    Rows live in slots; the stepping sampler keeps its live rows packed in slots
    0..n-1 so that a decode step reads the cache through a view, never a copy.
    `k[layer]` and `v[layer]` are one tensor per layer, (slots, heads, seq_len, head_dim),
    each its own allocation: a compiled step (torch.compile) writes a step's keys into
    them in place, where a write into a view of one tensor for all layers made inductor
    copy the whole cache back every step (about 90 ms a step for the bundled model).
    """

    def __init__(self, cfg: TransformerConfig, slots: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.text_len = cfg.text_len
        shape = (slots, cfg.n_head, cfg.seq_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.slots = slots
        self.device = self.k[0].device

    def copy_rows(self, src: list[int], dst: list[int]) -> None:
        """Copy whole rows (all layers) from slots `src` to slots `dst` (no slot in both)."""
        copy_slots([*self.k, *self.v], src, dst)

    def snapshot(self, slot: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, a copy of slot `slot`'s keys and values over the text (what prefill wrote)."""
        return snapshot_prefix(self.k, self.v, slot, self.text_len)

    def fill(self, start: int, end: int, prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Slots start..end-1 take `prefix` (from `snapshot()`) at its positions."""
        fill_prefix(self.k, self.v, start, end, prefix)


class StepIndex:
    """Where a decode step's rows write and what they see, built once for every layer: the
    first `live` positions of the cache (every row's position is below it)."""

    def __init__(self, pos: torch.Tensor, live: int):
        self.pos = pos                                                   # (n,)
        self.live = live
        self.rows = torch.arange(pos.shape[0], device=pos.device)        # slot of each row
        visible = torch.arange(live, device=pos.device)[None, :] <= pos[:, None]
        self.visible = visible[:, None, None, :]                         # (n, 1, 1, live)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        shape = (B, T, self.n_head, self.head_dim)
        return (q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2),
                v.view(shape).transpose(1, 2))  # each (B, heads, T, head_dim)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                slots: torch.Tensor | None = None) -> torch.Tensor:
        """Causal self-attention over a prefix starting at position 0; fills `cache[slots]` if given."""
        B, T, C = x.shape
        q, k, v = self._split(x)
        if cache is not None:
            cache.k[layer][slots, :, :T] = k
            cache.v[layer][slots, :, :T] = v
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def step(self, x: torch.Tensor, at: StepIndex, cache: KVCache, layer: int) -> torch.Tensor:
        """One token per row; row i sits in slot i at position at.pos[i]. Cost is position-free."""
        n = x.shape[0]
        q, k, v = self._split(x)                       # (n, heads, 1, head_dim)
        # The new keys go into the layer's own tensor (not a view of it: see KVCache), and
        # the attention reads rows 0..n-1 through a view.
        cache.k[layer][at.rows, :, at.pos] = k[:, :, 0]
        cache.v[layer][at.rows, :, at.pos] = v[:, :, 0]
        ck, cv = cache.k[layer][:n, :, :at.live], cache.v[layer][:n, :, :at.live]  # (n, heads, live, head_dim)
        y = attend(q, ck, cv, at.visible)  # base.py: exact over the live prefix, batch-invariant
        return self.proj(y.transpose(1, 2).reshape(n, 1, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, layer=0, slots=None):
        x = x + self.attn(self.ln1(x), cache, layer, slots)
        return x + self.mlp(self.ln2(x))

    def step(self, x, at, cache, layer):
        x = x + self.attn.step(self.ln1(x), at, cache, layer)
        return x + self.mlp(self.ln2(x))


class ImageGPT(nn.Module):
    """The bundled family's sampling model (ops/families/base.py, SamplingModel)."""
    graphable = True  # decode_step has fixed shapes per batch size: compiled or captured per bucket

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.text_emb = nn.Embedding(cfg.text_vocab, cfg.d_model)
        self.image_emb = nn.Embedding(cfg.image_vocab, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.image_vocab, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @property
    def text_len(self) -> int:
        return self.cfg.text_len

    @property
    def image_len(self) -> int:
        return self.cfg.image_len

    @property
    def image_vocab(self) -> int:
        return self.cfg.image_vocab

    def new_cache(self, slots: int, device: str | torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(self.cfg, slots, device, dtype)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def _embed(self, text: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        x = self.text_emb(text)  # (B, text_len, C)
        if image is not None and image.shape[1]:
            x = torch.cat([x, self.image_emb(image)], dim=1)  # (B, T, C)
        return x + self.pos_emb(torch.arange(x.shape[1], device=x.device))

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Uncached reference / training path.

        text (B, text_len), image (B, k) with k <= image_len -> logits (B, k, image_vocab)
        for image tokens 0..k-1 (teacher forcing on image[:, :k-1]).
        """
        k = image.shape[1]
        x = self._embed(text, image[:, : k - 1])
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x[:, self.cfg.text_len - 1:])  # (B, k, C)
        return self.head(x)

    @torch.no_grad()
    def prefill(self, text: torch.Tensor, cache: KVCache, slots: torch.Tensor) -> torch.Tensor:
        """Run the text prefix into `cache[slots]`; logits for image token 0, (B, image_vocab)."""
        x = self._embed(text, None)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, slots)
        return self.head(self.ln_f(x[:, -1]))

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, index: torch.Tensor, cache: KVCache,
                    last: int | None = None) -> torch.Tensor:
        """Feed image token `index[i]` of row i (slot i); logits for token index[i]+1, (n, image_vocab).
        `last`: the largest index[i] (None: attend over the whole cache)."""
        pos = index + self.cfg.text_len  # absolute positions, (n,)
        x = self.image_emb(tokens)[:, None] + self.pos_emb(pos)[:, None]  # (n, 1, C)
        at = StepIndex(pos, live_length(last, self.cfg.seq_len, self.cfg.text_len))
        for i, block in enumerate(self.blocks):
            x = block.step(x, at, cache, i)
        return self.head(self.ln_f(x[:, 0]))

