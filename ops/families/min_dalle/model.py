"""DALL·E Mini/Mega's BART encoder-decoder (min-dalle's DalleBartEncoder/DalleBartDecoder),
reimplemented as a SamplingModel over a per-slot RowCache.

One row's life, as min-dalle's generate_raw_image_stream runs it:
    prefill      the encoder runs once over the row's 64 text ids (mask: id != 1); each decoder
                 layer's cross-attention keys and values of the encoder state go into the row's
                 slot with the row's text mask; then the decoder runs on min-dalle's first image
                 token, 2**14 - 1, at position 0 -> logits for image token 0.
    decode_step  image token i is fed at decoder position i + 1 -> logits for token i + 1. Its
                 self-attention keys/values go into the slot at that position; it attends to
                 positions 0..i+1 of its own slot and to its own slot's unmasked text.
Note min-dalle feeds 2**14 - 1 = 16383 (torch.full(..., 2 ** 14 - 1)) as the start token, not the
decoder's extra row image_vocab_count (16384 mini / 16415 mega) that DALL·E Mini was trained
with; we feed what min-dalle feeds, so our images are min-dalle's.
Only the first `image_vocab` (16384, the VQGAN's codebook) rows of lm_head are kept: min-dalle
samples from logits[:, :2 ** 14], so the other rows are never computed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tessera.ops.families.base import ModelLoadError, ModelUnsupported, attend, copy_slots, live_length

HEAD_DIM = 64          # see heads_for()
IMAGE_LEN = 256        # min-dalle's IMAGE_TOKEN_COUNT: a 16 x 16 VQGAN grid
START_TOKEN = 2 ** 14 - 1
PAD = 1


def heads_for(embed: int) -> int:
    """Attention heads cannot be read from the weights' shapes. min-dalle's MinDalle uses 16 heads
    for mini (embed 1024) and 32 for mega (embed 2048): 64 dimensions a head in both, so the head
    count is embed // 64 (checked against min-dalle's constants in the tests)."""
    if embed % HEAD_DIM:
        raise ModelUnsupported(f"min-dalle embed width {embed} is not a multiple of {HEAD_DIM}: "
                               "its attention head count is unknown")
    return embed // HEAD_DIM


@dataclass(frozen=True)
class MinDalleConfig:
    encoder_layers: int
    decoder_layers: int
    embed: int
    heads: int
    encoder_glu: int
    decoder_glu: int
    text_vocab: int          # encoder embed_tokens rows
    text_len: int            # encoder embed_positions rows (64)
    decoder_vocab: int       # decoder lm_head rows (image_vocab_count + 1)
    image_vocab: int         # logits served: the VQGAN codebook (16384)
    image_len: int = IMAGE_LEN

    @property
    def head_dim(self) -> int:
        return self.embed // self.heads


def _layer_count(sd: dict[str, torch.Tensor]) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _shape(sd: dict, key: str, file: str) -> torch.Size:
    if key not in sd:
        raise ModelLoadError(f"min-dalle {file} has no {key}: not min-dalle's DalleBart weights")
    return sd[key].shape


def read_config(encoder_sd: dict, decoder_sd: dict, image_vocab: int, enc_file: str, dec_file: str) -> MinDalleConfig:
    """Every dimension from the weights' shapes."""
    text_vocab, embed = _shape(encoder_sd, "embed_tokens.weight", enc_file)
    text_len = _shape(encoder_sd, "embed_positions.weight", enc_file)[0]
    enc_glu = _shape(encoder_sd, "layers.0.glu.fc0.weight", enc_file)[0]
    dec_rows, dec_embed = _shape(decoder_sd, "lm_head.weight", dec_file)
    dec_pos = _shape(decoder_sd, "embed_positions.weight", dec_file)[0]
    dec_glu = _shape(decoder_sd, "layers.0.glu.fc0.weight", dec_file)[0]
    if dec_embed != embed:
        raise ModelLoadError(f"min-dalle {dec_file} is {dec_embed} wide but {enc_file} is {embed}: "
                             "they are not one model's halves")
    if dec_pos != IMAGE_LEN:
        raise ModelUnsupported(f"min-dalle {dec_file} has {dec_pos} image positions; min-dalle makes {IMAGE_LEN}")
    if dec_rows <= max(image_vocab - 1, START_TOKEN):
        raise ModelLoadError(f"min-dalle {dec_file} predicts {dec_rows} image tokens, fewer than the "
                             f"VQGAN's {image_vocab}")
    return MinDalleConfig(
        encoder_layers=_layer_count(encoder_sd), decoder_layers=_layer_count(decoder_sd),
        embed=embed, heads=heads_for(embed), encoder_glu=enc_glu, decoder_glu=dec_glu,
        text_vocab=text_vocab, text_len=text_len, decoder_vocab=dec_rows, image_vocab=image_vocab)


# -- modules (parameter names are min-dalle's, so its state dicts load as they are) ------------
class GLU(nn.Module):
    def __init__(self, embed: int, middle: int):
        super().__init__()
        self.ln0 = nn.LayerNorm(embed)
        self.ln1 = nn.LayerNorm(middle)
        self.fc0 = nn.Linear(embed, middle, bias=False)
        self.fc1 = nn.Linear(embed, middle, bias=False)
        self.fc2 = nn.Linear(middle, embed, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln0(x)
        return self.fc2(self.ln1(F.gelu(self.fc0(x)) * self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, embed: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(embed, embed, bias=False)
        self.v_proj = nn.Linear(embed, embed, bias=False)
        self.q_proj = nn.Linear(embed, embed, bias=False)
        self.out_proj = nn.Linear(embed, embed, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, E) -> (B, heads, T, head_dim)"""
        B, T, E = x.shape
        return x.view(B, T, self.heads, E // self.heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q (B, heads, Tq, D) over k, v (B, heads, Tk, D) where mask (B, 1, 1|Tq, Tk) is True."""
        y = attend(q, k, v, mask)  # base.py: batch-invariant, and exact over a live prefix
        B, _, T, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: MinDalleConfig):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.self_attn = Attention(cfg.embed, cfg.heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.glu = GLU(cfg.embed, cfg.encoder_glu)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.pre_self_attn_layer_norm(x)
        a = self.self_attn
        h = a.attend(a.split(a.q_proj(h)), a.split(a.k_proj(h)), a.split(a.v_proj(h)), mask)
        x = x + self.self_attn_layer_norm(h)
        return x + self.glu(x)


class Encoder(nn.Module):
    def __init__(self, cfg: MinDalleConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.text_vocab, cfg.embed)
        self.embed_positions = nn.Embedding(cfg.text_len, cfg.embed)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layernorm_embedding = nn.LayerNorm(cfg.embed)
        self.final_ln = nn.LayerNorm(cfg.embed)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """text (B, text_len) long -> (B, text_len, embed), as DalleBartEncoder.forward (any B)."""
        mask = text.ne(PAD)[:, None, None, :]
        pos = torch.arange(text.shape[1], device=text.device)
        x = self.layernorm_embedding(self.embed_tokens(text) + self.embed_positions(pos))
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_ln(x)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MinDalleConfig):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.self_attn = Attention(cfg.embed, cfg.heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.pre_encoder_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.encoder_attn = Attention(cfg.embed, cfg.heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.glu = GLU(cfg.embed, cfg.decoder_glu)


class Decoder(nn.Module):
    def __init__(self, cfg: MinDalleConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.decoder_vocab, cfg.embed)
        self.embed_positions = nn.Embedding(cfg.image_len, cfg.embed)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.layernorm_embedding = nn.LayerNorm(cfg.embed)
        self.final_ln = nn.LayerNorm(cfg.embed)
        # the image-token rows only: min-dalle's lm_head has decoder_vocab rows
        self.lm_head = nn.Linear(cfg.embed, cfg.image_vocab, bias=False)


# -- the row cache --------------------------------------------------------------------------
class MinDalleCache:
    """Per slot: each decoder layer's self-attention keys/values over the 256 image positions,
    its cross-attention keys/values of the row's encoded text, and the row's text mask.
    One tensor per layer and kind (as ops/families/tessera/transformer.py's KVCache, for in-place writes
    by a compiled step); the sampler keeps live rows in slots 0..n-1 and a step reads views."""

    def __init__(self, cfg: MinDalleConfig, slots: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        own = (slots, cfg.heads, cfg.image_len, cfg.head_dim)
        text = (slots, cfg.heads, cfg.text_len, cfg.head_dim)
        n = cfg.decoder_layers
        self.k = [torch.zeros(own, device=device, dtype=dtype) for _ in range(n)]
        self.v = [torch.zeros(own, device=device, dtype=dtype) for _ in range(n)]
        self.ck = [torch.zeros(text, device=device, dtype=dtype) for _ in range(n)]
        self.cv = [torch.zeros(text, device=device, dtype=dtype) for _ in range(n)]
        # all True in unused slots, so a padding row of a bucketed step never attends to nothing
        self.mask = torch.ones(slots, cfg.text_len, dtype=torch.bool, device=device)
        self.slots = slots
        self.device = self.mask.device

    def _tensors(self) -> list[torch.Tensor]:
        return [*self.k, *self.v, *self.ck, *self.cv, self.mask]

    def copy_rows(self, src: list[int], dst: list[int]) -> None:
        copy_slots(self._tensors(), src, dst)

    def snapshot(self, slot: int) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """What prefill wrote: position 0's self-attention keys/values, the text's keys/values, the mask."""
        return {"k": [k[slot, :, :1].clone() for k in self.k], "v": [v[slot, :, :1].clone() for v in self.v],
                "ck": [k[slot].clone() for k in self.ck], "cv": [v[slot].clone() for v in self.cv],
                "mask": self.mask[slot].clone()}

    def fill(self, start: int, end: int, snapshot: dict) -> None:
        for name in ("k", "v"):
            for t, s in zip(getattr(self, name), snapshot[name]):
                t[start:end, :, :1] = s
        for name in ("ck", "cv"):
            for t, s in zip(getattr(self, name), snapshot[name]):
                t[start:end] = s
        self.mask[start:end] = snapshot["mask"]


# -- the sampling model ---------------------------------------------------------------------
class MinDalleBart(nn.Module):
    """SamplingModel: min-dalle's encoder and decoder over a MinDalleCache."""

    graphable = True  # decode_step: fixed shapes, no host syncs, in-place cache writes

    def __init__(self, cfg: MinDalleConfig):
        super().__init__()
        self.cfg = cfg
        self.text_len, self.image_len, self.image_vocab = cfg.text_len, cfg.image_len, cfg.image_vocab
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def new_cache(self, slots: int, device: str | torch.device, dtype: torch.dtype) -> MinDalleCache:
        return MinDalleCache(self.cfg, slots, device, dtype)

    @torch.no_grad()
    def encode(self, text: torch.Tensor) -> torch.Tensor:
        return self.encoder(text)

    @torch.no_grad()
    def prefill(self, text: torch.Tensor, cache: MinDalleCache, slots: torch.Tensor) -> torch.Tensor:
        """text (G, text_len) into slots (G,): encode, store each layer's cross keys/values and the
        text mask, run the start token at position 0; logits for image token 0, (G, image_vocab)."""
        state = self.encoder(text)
        cache.mask[slots] = text.ne(PAD)
        for i, layer in enumerate(self.decoder.layers):
            a = layer.encoder_attn
            cache.ck[i][slots] = a.split(a.k_proj(state)).to(cache.ck[i].dtype)
            cache.cv[i][slots] = a.split(a.v_proj(state)).to(cache.cv[i].dtype)
        start = torch.full_like(slots, START_TOKEN)
        return self._step(start, torch.zeros_like(slots), slots, cache, packed=False)

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, index: torch.Tensor, cache: MinDalleCache,
                    last: int | None = None) -> torch.Tensor:
        """Row i (slot i) feeds image token index[i] at decoder position index[i] + 1; logits for
        token index[i] + 1, (n, image_vocab). `last`: the largest index[i] (None: attend over all
        256 positions)."""
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        live = live_length(last, self.image_len, 1)  # image index i is fed at decoder position i + 1
        return self._step(tokens, index + 1, rows, cache, packed=True, live=live)

    def _step(self, tokens: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor, cache: MinDalleCache,
              packed: bool, live: int = 1) -> torch.Tensor:
        """One token per row at position pos; row r's state is in slot rows[r] (rows == 0..n-1 when
        packed, so the cache is read through views); it attends over positions 0..live-1 (every
        row's pos < live), the rest of its slot unread."""
        n = tokens.shape[0]
        dec = self.decoder
        x = dec.layernorm_embedding(dec.embed_tokens(tokens) + dec.embed_positions(pos))[:, None]  # (n, 1, E)
        visible = (torch.arange(live, device=pos.device)[None, :] <= pos[:, None])[:, None, None, :]
        text_mask = (cache.mask[:n] if packed else cache.mask[rows])[:, None, None, :]
        for i, layer in enumerate(dec.layers):
            a = layer.self_attn
            h = layer.pre_self_attn_layer_norm(x)
            q, k, v = a.split(a.q_proj(h)), a.split(a.k_proj(h)), a.split(a.v_proj(h))  # (n, H, 1, D)
            cache.k[i][rows, :, pos] = k[:, :, 0].to(cache.k[i].dtype)
            cache.v[i][rows, :, pos] = v[:, :, 0].to(cache.v[i].dtype)
            ck, cv = ((cache.k[i][:n, :, :live], cache.v[i][:n, :, :live]) if packed
                      else (cache.k[i][rows, :, :live], cache.v[i][rows, :, :live]))  # (n, H, live, D)
            x = x + layer.self_attn_layer_norm(a.attend(q, ck.to(q.dtype), cv.to(q.dtype), visible))
            c = layer.encoder_attn
            h = layer.pre_encoder_attn_layer_norm(x)
            tk, tv = (cache.ck[i][:n], cache.cv[i][:n]) if packed else (cache.ck[i][rows], cache.cv[i][rows])
            x = x + layer.encoder_attn_layer_norm(c.attend(c.split(c.q_proj(h)), tk.to(q.dtype), tv.to(q.dtype),
                                                           text_mask))
            x = x + layer.glu(x)
        return dec.lm_head(dec.final_ln(x[:, 0]))


def _defaults_for_missing(module: nn.Module, sd: dict[str, torch.Tensor], file: str) -> dict[str, torch.Tensor]:
    """The module's state dict from `sd`: shapes checked; a missing LayerNorm weight/bias takes its
    default (ones/zeros), which is what min-dalle's load_state_dict(strict=False) leaves there; any
    other missing tensor is an error (min-dalle would run on a random init)."""
    norms = {f"{name}.{p}" for name, m in module.named_modules() if isinstance(m, nn.LayerNorm)
             for p in ("weight", "bias")}
    out = {}
    for key, want in module.state_dict().items():
        got = sd.get(key)
        if got is None:
            if key in norms:
                got = torch.ones(want.shape) if key.endswith("weight") else torch.zeros(want.shape)
            else:
                raise ModelLoadError(f"min-dalle {file} has no {key}")
        if key == "lm_head.weight":
            got = got[:want.shape[0]]  # the image tokens' rows only
        if tuple(got.shape) != tuple(want.shape):
            raise ModelLoadError(f"min-dalle {file}: {key} is {tuple(got.shape)}, expected {tuple(want.shape)}")
        out[key] = got
    return out


def build_model(cfg: MinDalleConfig, encoder_sd: dict, decoder_sd: dict, device: str | torch.device,
                dtype: torch.dtype, enc_file: str = "encoder.pt", dec_file: str = "decoder.pt") -> MinDalleBart:
    """The model on `device` in `dtype`, built without a random init (meta tensors, then the weights)."""
    with torch.device("meta"):
        model = MinDalleBart(cfg)
    for part, sd, file in ((model.encoder, encoder_sd, enc_file), (model.decoder, decoder_sd, dec_file)):
        state = _defaults_for_missing(part, sd, file)
        state = {k: t.to(device=device, dtype=dtype, copy=True) for k, t in state.items()}  # off the mmap
        part.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
