"""What a model family gives the OPs: the contract every family's loader fills.

A family is what the sampler and the OPs around it need from a kind of model, and nothing
more (ARCHITECTURE.md, "Model families"):

    tokenizer   PromptTokenizer   prompt -> the sampling model's text ids (fixed length)
    transformer SamplingModel     prefill (once per row) and step (one token for every live row)
    dvae        ImageDecoder      image token grids -> uint8 pixels, as the family's project saves them
    clip        Reranker | None   prompt and pixels -> unit embeddings; None: sampling order, no score

Every method takes and returns torch tensors on the bundle's device unless it says otherwise.
The OPs never look past these names, so the bundled shapes model, DALLE-pytorch checkpoints
and min-dalle's DALL·E Mini/Mega weights all serve through the same sampler: iteration-level
batching, CFG pairs, per-row seeds, previews and cancellation work alike for each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch


class ModelLoadError(RuntimeError):
    """Model files that cannot be loaded; the message names the file and what to do."""


class ModelUnsupported(ModelLoadError):
    """Files that load but describe a model Tessera cannot serve (sparse attention, a VQGAN
    without its config, ...): `tessera serve` exits 2 with the message."""


class PromptError(ValueError):
    """A prompt the model cannot take: empty once normalised, or longer than the context."""


class PromptTooLong(PromptError):
    """A prompt over the model's text context, worded the same for every family."""

    def __init__(self, length: int, limit: int):
        super().__init__(f"prompt is {length} tokens long; the limit is {limit} tokens")
        self.length, self.limit = length, limit

    def __reduce__(self):  # pickled with its own arguments, not the message (a process hop)
        return type(self), (self.length, self.limit)


@dataclass
class SamplingDefaults:
    temperature: float = 1.0
    top_k: int = 0            # 0: off (the whole image vocabulary)
    top_p: float = 1.0
    guidance_scale: float = 1.0


@dataclass(frozen=True)
class Encoded:
    """A prompt as the sampling model takes it, with what the response should say about it."""
    ids: list[int]                                   # exactly `text_len` ids, padded
    notes: list[str] = field(default_factory=list)   # e.g. "prompt cut to 64 tokens"


@runtime_checkable
class PromptTokenizer(Protocol):
    name: str            # for GetInfo: "CLIP BPE (49408 tokens)", "BART BPE", ...
    context: int         # ids per prompt row

    def encode_prompt(self, prompt: str) -> Encoded:
        """The prompt's ids; PromptError (INVALID_ARGUMENT) when the model cannot take it."""

    def empty(self) -> list[int]:
        """The unconditional text for classifier-free guidance (the family's own null prompt)."""

    def unknown_words(self, prompt: str) -> list[str]:
        """Words the model cannot know (a closed-vocabulary model); [] for a BPE."""


@runtime_checkable
class RowCache(Protocol):
    """Per-row state the sampling model keeps between steps (KV cache, cross-attention keys,
    shifted-token history...), for `slots` rows. The sampler keeps its live rows packed in
    slots 0..n-1."""
    slots: int
    device: torch.device

    def copy_rows(self, src: list[int], dst: list[int]) -> None:
        """Copy every piece of state of slots `src` to slots `dst` (no slot in both)."""

    def snapshot(self, slot: int) -> Any:
        """A copy of what `prefill` wrote for slot `slot` (to start other rows from it)."""

    def fill(self, start: int, end: int, snapshot: Any) -> None:
        """Slots start..end-1 take `snapshot` (from `snapshot()`), as if prefilled with it."""


def snapshot_prefix(keys: list[torch.Tensor], values: list[torch.Tensor], slot: int,
                    length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A RowCache's snapshot over per-layer keys and values laid out (slot, head, position, dim):
    per layer, a copy of slot `slot`'s at positions 0..length-1."""
    return [(k[slot, :, :length].clone(), v[slot, :, :length].clone()) for k, v in zip(keys, values)]


def fill_prefix(keys: list[torch.Tensor], values: list[torch.Tensor], start: int, end: int,
                prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """A RowCache's fill: slots start..end-1 take `prefix` (from snapshot_prefix) at its positions."""
    for k, v, (pk, pv) in zip(keys, values, prefix):
        length = pk.shape[1]
        k[start:end, :, :length] = pk  # broadcast over the slots
        v[start:end, :, :length] = pv


# A decode step attends over the cache's first `live_length(...)` positions, a multiple of this:
# few distinct shapes, and at most this many dead positions a step.
LIVE_STEP = 32


def live_length(last: int | None, size: int, offset: int = 0) -> int:
    """How many of a cache's `size` positions a step attends over when its rows' largest image
    index is `last` and index i sits at cache position i + `offset` (all `size` when `last` is
    None: a compiled or captured step keeps one shape)."""
    if last is None:
        return size
    return min(size, ((last + offset) // LIVE_STEP + 1) * LIVE_STEP)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Attention of q (B, heads, Tq, D) over k, v (B, heads, Tk, D) where `visible` (B, 1, 1|Tq, Tk)
    is True, softmax in float32. Unlike scaled_dot_product_attention on a CPU, a row's output
    here is the same bits whatever its batch and however many masked positions follow its
    visible ones (checked in the tests), so a step may attend over the live prefix of the cache
    and a row's bytes still never depend on its batch-mates."""
    if q.dtype == torch.float32:
        scores = torch.matmul(q, k.transpose(-1, -2))                        # (B, heads, Tq, Tk)
    else:  # the same bits in bf16, twice as fast over a live prefix (a strided view of the cache)
        scores = torch.matmul(k, q.transpose(-1, -2)).transpose(-1, -2)
    scores = (scores * q.shape[-1] ** -0.5).float().masked_fill(~visible, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)   # (B, heads, Tq, D)


def copy_slots(tensors: list[torch.Tensor], src: list[int], dst: list[int]) -> None:
    """A RowCache's copy_rows over its per-slot tensors (slot first): one strided copy per row
    and tensor, which moves a handful of rows 6-10x faster than an index gather and scatter."""
    if set(src) & set(dst):
        raise ValueError("copy_rows: a slot cannot be both a source and a destination")
    for s, d in zip(src, dst, strict=True):
        for t in tensors:
            t[d].copy_(t[s])


@runtime_checkable
class SamplingModel(Protocol):
    text_len: int       # ids per prompt row (the tokenizer's context)
    image_len: int      # image tokens per image
    image_vocab: int    # width of the logits: image tokens only
    graphable: bool     # decode_step may be compiled / captured at fixed batch sizes

    def new_cache(self, slots: int, device: str | torch.device, dtype: torch.dtype) -> RowCache: ...

    def prefill(self, text: torch.Tensor, cache: RowCache, slots: torch.Tensor) -> torch.Tensor:
        """text (G, text_len) long into cache slots `slots` (G,); logits for image token 0, (G, image_vocab)."""

    def decode_step(self, tokens: torch.Tensor, index: torch.Tensor, cache: RowCache,
                    last: int | None = None) -> torch.Tensor:
        """Row i (in slot i) feeds image token number index[i], tokens[i]; logits for token
        index[i] + 1, (n, image_vocab). Rows are independent: a row's logits never depend
        on its batch-mates. `last` (the largest index[i], known on the host) lets the step
        attend over the live prefix of the cache only (`live_length`); None: the whole cache
        (one shape, for a compiled or captured step)."""


@runtime_checkable
class ImageDecoder(Protocol):
    image_size: int     # pixels per side
    image_len: int      # tokens per image

    def pixels(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, image_len) long -> (B, H, W, 3) uint8, as the family's own project saves images."""


@runtime_checkable
class Reranker(Protocol):
    name: str           # for GetInfo
    context: int        # ids per prompt for encode_text

    def tokenize(self, prompt: str) -> list[int]:
        """The prompt as encode_text takes it (`context` ids)."""

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, context) long -> (B, d) float32, unit length."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, d) float32, unit length."""


@dataclass
class ModelBundle:
    name: str
    tokenizer: PromptTokenizer
    dvae: ImageDecoder
    transformer: SamplingModel
    clip: Reranker | None
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    kind: str = "tessera"                                # the family: tessera, dalle-pytorch, min-dalle
    details: dict[str, Any] = field(default_factory=dict)  # family facts for GetInfo (strings, numbers)
    dtype: torch.dtype = torch.float32                   # the precision it was loaded in

    @property
    def image_size(self) -> int:
        return self.dvae.image_size


@dataclass(frozen=True)
class ModelSpec:
    """Which model to serve and the files that go with it: the one description of a model,
    from the configuration's `model` section (or a `models:` entry, an admin Load, `tessera
    serve --model/--bpe-path/--vae/--clip`) to each model OP's `model` setting and the family
    that loads it; its keys are the section's."""
    # None: the bundled shapes model; a Tessera model directory, a DALLE-pytorch .pt, or min-dalle's directory.
    path: str | None = None
    bpe_path: str | None = None   # DALLE-pytorch: CLIP's BPE merges (plain or .gz) or a tokenizers JSON
    vae: str | None = None        # DALLE-pytorch: a separately trained DiscreteVAE (train_vae.py's file)
    clip: str | None = None       # ARCH:PATH of a local OpenCLIP checkpoint that reranks

    @classmethod
    def of(cls, value: ModelSpec | Mapping[str, Any] | None) -> ModelSpec:
        """An OP's `model` setting as a spec: as given (checked settings), or the mapping the
        configuration holds before an OP parses it (None: the bundled model)."""
        if isinstance(value, cls):
            return value
        return cls(**(value or {}))


def load_weights_only(path) -> Any:
    """torch.load with weights_only=True (no code runs), memory-mapped where the file allows it
    (a zip file, as torch.save writes since 1.6): tensors are read when a model is built from
    them, and a model built on the meta device (to tokenize, to describe) never reads them."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:  # a legacy (non-zip) file cannot be mapped
        if "mmap" not in str(e).lower() and "zip" not in str(e).lower():
            raise
        return torch.load(path, map_location="cpu", weights_only=True)
