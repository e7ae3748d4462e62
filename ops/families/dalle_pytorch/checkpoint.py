"""DALLE-pytorch checkpoints: train_dalle.py's file, read without running code, and its hparams.

train_dalle.py saves

    {'hparams': dalle_params, 'vae_params': ..., 'epoch': ..., 'version': __version__,
     'vae_class_name': ..., 'weights': dalle.state_dict(), 'opt_state': ..., 'scheduler_state': ...}

`dalle_params` has grown over DALLE-pytorch's releases, and DALLE's class defaults
(shift_tokens=True, rotary_emb=True, ...) differ from train_dalle.py's CLI defaults, so the
layout is read off the state dict wherever the keys tell it (rotary, shift tokens, sandwich
norm, shared embeddings, reversible, LayerScale, depth, sizes), and from the hparams only
where they cannot (attention types, heads, stable, shared layer ids).
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tessera.ops.families.base import ModelLoadError, ModelUnsupported, load_weights_only

ATTN_TYPES = ("full", "axial_row", "axial_col", "conv_like")

_CONSOLIDATE = (
    "consolidate the DeepSpeed checkpoint into a plain state dict first: run DeepSpeed's "
    "zero_to_fp32.py in the '{ds}' directory (or load it with deepspeed / "
    "deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint and save "
    "{{..., 'weights': dalle.state_dict()}} with torch.save), then serve that file")


_ZIP_MAGIC = b"PK\x03\x04"   # torch.save since 1.6
_PICKLE_PROTO = b"\x80"       # torch.save's legacy format: a pickle, protocol 2 or later


def _not_a_torch_file(path: Path) -> str | None:
    """What the file is instead, when its first bytes are neither torch.save's zip nor a pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO):
        return None
    if not head:
        return "the file is empty"
    if head.startswith(b"\x1f\x8b"):
        return "it is a gzip file"
    return "its bytes are neither a zip file nor a pickle"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """train_dalle.py's file as a dict, loaded with weights_only=True (no code runs)."""
    p = Path(path)
    if p.is_dir():
        if p.name.endswith("-ds-cp"):
            raise ModelUnsupported(f"{p} is a DeepSpeed checkpoint directory: " + _CONSOLIDATE.format(ds=p))
        raise ModelLoadError(f"{p} is a directory, not a DALLE-pytorch checkpoint file")
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file")
    not_torch = _not_a_torch_file(p)
    if not_torch:
        raise ModelLoadError(f"{p} is not a PyTorch checkpoint: {not_torch} (torch.save writes a zip file; "
                             "train_dalle.py's dalle.pt is one)")
    try:
        ckpt = load_weights_only(p)
    except pickle.UnpicklingError as e:
        msg = str(e)
        lines = [line.strip() for line in msg.splitlines() if line.strip()]
        reaching = next((line for line in lines if "global" in line.lower()), None)
        if reaching:  # the pickle names a function or class to call: code, not weights
            raise ModelLoadError(f"{p} is not a plain checkpoint: {reaching}; refusing to run code from it") from None
        first = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "unpickling failed")
        raise ModelLoadError(f"{p} is truncated or corrupt, or not a PyTorch checkpoint ({first})") from None
    except Exception as e:  # noqa: BLE001 - zip reader errors, EOFError, ...
        raise ModelLoadError(f"{p} is truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or "weights" not in ckpt:
        raise ModelLoadError(f"{p} is not a DALLE-pytorch checkpoint (train_dalle.py's dict with 'hparams' and 'weights')")
    weights = ckpt["weights"]
    if isinstance(weights, str):
        ds = p.parent / (p.stem + "-ds-cp")
        raise ModelUnsupported(f"{p} was saved by DeepSpeed training and holds no weights ({weights!r}): "
                               + _CONSOLIDATE.format(ds=ds))
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelLoadError(f"{p}: 'weights' is not a state dict of tensors")
    if not isinstance(ckpt.get("hparams", {}), dict):
        raise ModelLoadError(f"{p}: 'hparams' is not a dict")
    ckpt["source"] = str(p)
    return ckpt


# -- the state dict's layout ---------------------------------------------------------------

def sublayer_prefixes(state: dict[str, torch.Tensor]) -> tuple[bool, list[tuple[str, str]]]:
    """(reversible, [(attention prefix, feed-forward prefix) per layer]) of the transformer."""
    seq = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.layers\.(\d+)\.", k))}
    rev = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.blocks\.(\d+)\.", k))}
    if seq and rev:
        raise ModelLoadError("the weights hold both a sequential and a reversible transformer")
    if rev:
        return True, [(f"transformer.layers.blocks.{i}.f.net.", f"transformer.layers.blocks.{i}.g.net.")
                      for i in range(max(rev) + 1)]
    if seq:
        return False, [(f"transformer.layers.layers.{i}.0.", f"transformer.layers.layers.{i}.1.")
                       for i in range(max(seq) + 1)]
    raise ModelLoadError("no transformer layers in the weights (neither transformer.layers.layers.N "
                         "(sequential) nor transformer.layers.blocks.N (reversible))")


def sublayer(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """One LayerScale(PreNorm(...)) sublayer's tensors by leaf name ('scale', 'norm.weight',
    'to_qkv.weight', 'net.0.weight', ...) with the wrapper chain (`fn.` ...) stripped, and
    how many wrappers each sat under (the chain differs between releases and options)."""
    leaves, depth = {}, {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        rest, d = k[len(prefix):], 0
        while rest.startswith("fn."):
            rest, d = rest[3:], d + 1
        leaves[rest], depth[rest] = v, d
    return leaves, depth


@dataclass
class DalleHparams:
    dim: int
    depth: int
    heads: int
    dim_head: int
    text_seq_len: int
    num_text_tokens: int          # as train_dalle.py's hparams: without the text_seq_len padding ids
    num_image_tokens: int
    image_fmap_size: int
    attn_types: tuple[str, ...] = ("full",)
    rotary_emb: bool = True
    shift_tokens: bool = True
    stable: bool = False
    sandwich_norm: bool = False
    share_input_output_emb: bool = False
    shared_attn_ids: tuple[int, ...] | None = None
    shared_ff_ids: tuple[int, ...] | None = None
    reversible: bool = False
    layer_scale: bool = True      # LayerScale (absent in the earliest releases)
    ff_mult: int = 4
    version: str | None = None
    vae_class_name: str | None = None
    vae_params: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def text_len(self) -> int:  # positions of the text prefix: <bos> + text_seq_len
        return self.text_seq_len + 1

    @property
    def image_len(self) -> int:
        return self.image_fmap_size ** 2

    @property
    def num_text_tokens_total(self) -> int:  # with the unique padding ids
        return self.num_text_tokens + self.text_seq_len

    @property
    def total_tokens(self) -> int:
        return self.num_text_tokens_total + self.num_image_tokens


def _ids(value: Any, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ModelLoadError(f"hparams {what}: not a list of layer ids: {value!r}") from None


def parse_hparams(ckpt: dict) -> DalleHparams:
    """The model's options: the state dict's layout where it shows them, the hparams elsewhere."""
    src = ckpt.get("source", "the checkpoint")
    hp = dict(ckpt.get("hparams") or {})
    state: dict[str, torch.Tensor] = ckpt["weights"]
    notes: list[str] = []

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise ModelLoadError(f"{src}: the weights lack {key!r}; not a DALLE-pytorch DALLE state dict")
        return state[key]

    if any(".attn_fn." in k for k in state) or "sparse" in str(hp.get("attn_types", "")) or hp.get("sparse_attn"):
        raise ModelUnsupported(f"{src}: sparse attention needs DeepSpeed's sparse attention kernels "
                               "(attn_types 'sparse'); Tessera serves full, axial_row, axial_col and conv_like")

    head_w = need("to_logits.1.weight")
    total_tokens, dim = head_w.shape
    reversible, prefixes = sublayer_prefixes(state)
    depth = len(prefixes)
    if hp.get("depth") is not None and int(hp["depth"]) != depth:
        raise ModelLoadError(f"{src}: hparams depth {hp['depth']} but the weights hold {depth} layers")
    if hp.get("dim") is not None and int(hp["dim"]) != dim:
        raise ModelLoadError(f"{src}: hparams dim {hp['dim']} but to_logits is {dim} wide")
    if hp.get("reversible") is not None and bool(hp["reversible"]) != reversible:
        notes.append(f"hparams reversible={hp['reversible']} disagrees with the weights; the weights win")

    # Rotary iff no learned text positions (DALLE: text_pos_emb = Embedding if not rotary_emb).
    rotary = "text_pos_emb.weight" not in state
    if not rotary:
        for k in ("image_pos_emb.weights.0", "image_pos_emb.weights.1"):
            need(k)
    if "rotary_emb" in hp and bool(hp["rotary_emb"]) != rotary:
        notes.append(f"hparams rotary_emb={hp['rotary_emb']} disagrees with the weights; the weights win")

    shared_emb = "text_emb.weight" not in state
    if shared_emb != ("image_emb.weight" not in state):
        raise ModelLoadError(f"{src}: the weights hold only one of text_emb.weight and image_emb.weight; "
                             "neither separate nor shared (share_input_output_emb) embeddings fit")

    text_seq_len = hp.get("text_seq_len")
    if not rotary:
        from_pos = state["text_pos_emb.weight"].shape[0] - 1
        if text_seq_len is not None and int(text_seq_len) != from_pos:
            raise ModelLoadError(f"{src}: hparams text_seq_len {text_seq_len} but text_pos_emb has {from_pos + 1} rows")
        text_seq_len = from_pos
    if text_seq_len is None:
        raise ModelLoadError(f"{src}: hparams lack text_seq_len and the weights do not show it (rotary model)")
    text_seq_len = int(text_seq_len)

    if not shared_emb:
        ntt_total = state["text_emb.weight"].shape[0]
        if hp.get("num_text_tokens") is not None and int(hp["num_text_tokens"]) + text_seq_len != ntt_total:
            raise ModelLoadError(f"{src}: hparams num_text_tokens {hp['num_text_tokens']} + text_seq_len "
                                 f"{text_seq_len} != text_emb's {ntt_total} rows")
    elif hp.get("num_text_tokens") is not None:
        ntt_total = int(hp["num_text_tokens"]) + text_seq_len
    else:
        raise ModelLoadError(f"{src}: shared input/output embeddings and no num_text_tokens in the hparams")
    num_image_tokens = total_tokens - ntt_total
    if num_image_tokens < 1:
        raise ModelLoadError(f"{src}: to_logits has {total_tokens} outputs, not more than the {ntt_total} text tokens")
    if not shared_emb and state["image_emb.weight"].shape[0] != num_image_tokens:
        raise ModelLoadError(f"{src}: image_emb has {state['image_emb.weight'].shape[0]} rows but to_logits "
                             f"leaves {num_image_tokens} image tokens")

    # The image grid: rotary's table covers text_seq_len + 1 + image_len positions; else the axial table.
    if rotary and "transformer.pos_emb" in state:
        image_len = state["transformer.pos_emb"].shape[-2] - (text_seq_len + 1)
    elif not rotary:
        image_len = state["image_pos_emb.weights.0"].shape[1] * state["image_pos_emb.weights.1"].shape[2]
    else:
        vp = ckpt.get("vae_params") or {}
        if "image_size" not in vp or "num_layers" not in vp:
            raise ModelLoadError(f"{src}: cannot tell the image grid (no transformer.pos_emb, no vae_params)")
        image_len = (int(vp["image_size"]) // 2 ** int(vp["num_layers"])) ** 2
    fmap = int(round(image_len ** 0.5))
    if fmap < 1 or fmap * fmap != image_len:
        raise ModelLoadError(f"{src}: {image_len} image positions is not a square grid")

    # Heads: the qkv projection is 3 * heads * dim_head wide.
    attn0, _ = sublayer(state, prefixes[0][0])
    if "to_qkv.weight" not in attn0:
        raise ModelLoadError(f"{src}: layer 0 has no attention projection (to_qkv.weight) under {prefixes[0][0]}")
    inner = attn0["to_qkv.weight"].shape[0] // 3
    heads, dim_head = hp.get("heads"), hp.get("dim_head")
    if heads is None and dim_head is None:
        heads = 8
    if heads is None:
        heads = inner // int(dim_head)
    if dim_head is None:
        dim_head = inner // int(heads)
    heads, dim_head = int(heads), int(dim_head)
    if heads * dim_head != inner:
        raise ModelLoadError(f"{src}: heads {heads} x dim_head {dim_head} != the attention's inner width {inner}")

    # Shift tokens, sandwich norm, LayerScale: from the wrapper chain of layer 0.
    ff0, ff_depth = sublayer(state, prefixes[0][1])
    if "net.0.weight" not in ff0 or "norm.weight" not in ff0:
        raise ModelLoadError(f"{src}: layer 0's feed-forward (norm.weight, net.0.weight) is missing under {prefixes[0][1]}")
    rel = ff_depth["net.0.weight"] - ff_depth["norm.weight"]
    if rel not in (1, 2, 3):
        raise ModelLoadError(f"{src}: layer 0's feed-forward sits under {rel} wrappers of its norm; "
                             "neither the plain nor the token-shift layout fits")
    shift = rel >= 2
    if "shift_tokens" in hp and bool(hp["shift_tokens"]) != shift:
        notes.append(f"hparams shift_tokens={hp['shift_tokens']} disagrees with the weights; the weights win")
    sandwich = "norm_out.weight" in ff0
    layer_scale = "scale" in ff0
    ff_mult = ff0["net.3.weight"].shape[1] // dim if "net.3.weight" in ff0 else 4

    attn_types = hp.get("attn_types") or ("full",)
    if isinstance(attn_types, str):
        attn_types = tuple(t.strip() for t in attn_types.split(",") if t.strip())
    attn_types = tuple(attn_types)
    for t in attn_types:
        if t not in ATTN_TYPES:
            raise ModelLoadError(f"{src}: unknown attention type {t!r} (known: {', '.join(ATTN_TYPES)})")
    shared_attn_ids = _ids(hp.get("shared_attn_ids"), "shared_attn_ids")
    shared_ff_ids = _ids(hp.get("shared_ff_ids"), "shared_ff_ids")
    if shared_attn_ids is not None:
        seen: dict[int, str] = {}
        for i in range(depth):
            a, t = shared_attn_ids[i % len(shared_attn_ids)], attn_types[i % len(attn_types)]
            if seen.setdefault(a, t) != t:
                raise ModelLoadError(f"{src}: attn_types do not match shared_attn_ids at layer {i}")

    return DalleHparams(
        dim=dim, depth=depth, heads=heads, dim_head=dim_head, text_seq_len=text_seq_len,
        num_text_tokens=ntt_total - text_seq_len, num_image_tokens=num_image_tokens, image_fmap_size=fmap,
        attn_types=attn_types, rotary_emb=rotary, shift_tokens=shift, stable=bool(hp.get("stable", False)),
        sandwich_norm=sandwich, share_input_output_emb=shared_emb, shared_attn_ids=shared_attn_ids,
        shared_ff_ids=shared_ff_ids, reversible=reversible, layer_scale=layer_scale, ff_mult=ff_mult,
        version=ckpt.get("version"), vae_class_name=ckpt.get("vae_class_name"),
        vae_params=ckpt.get("vae_params"), notes=notes)
