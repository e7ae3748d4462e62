"""Model directories: config.json, one safetensors file per model, tokenizer.json.

    >>> bundle = load_model_dir("ops/bundled/shapes-dalle", device="cpu")
    >>> bundle.transformer, bundle.dvae, bundle.clip, bundle.tokenizer

Every failure to load names the file at fault (ModelLoadError), never a bare traceback.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tessera.ops.families.base import ModelBundle, ModelLoadError, SamplingDefaults
from tessera.ops.families.tessera.clip import CLIP, CLIPConfig, ShapesReranker
from tessera.ops.families.tessera.dvae import DVAE, DVAEConfig
from tessera.ops.families.tessera.tokenizer import TextTokenizer
from tessera.ops.families.tessera.transformer import ImageGPT, TransformerConfig

BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[2] / "bundled" / "shapes-dalle"  # ops/bundled/


__all__ = ["BUNDLED_MODEL_DIR", "ModelBundle", "ModelLoadError", "SamplingDefaults", "load_model_dir",
           "save_model_dir"]


def _config(cls, raw: dict, path: Path, key: str):
    if not isinstance(raw.get(key), dict):
        raise ModelLoadError(f"{path}: missing section {key!r}")
    known = {f.name for f in fields(cls)}
    unknown = set(raw[key]) - known
    if unknown:
        raise ModelLoadError(f"{path}: unknown keys in {key!r}: {sorted(unknown)}")
    try:
        return cls(**raw[key])
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: bad {key!r} section: {exc}") from exc


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing weights file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelLoadError(f"{path}: weights do not match config.json "
                             f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ModelLoadError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                 f"config.json implies {tuple(expected[name].shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelLoadError(f"{path}: tensor {name} holds NaN or infinite values")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def load_model_dir(path: str | Path | None = None, device: str = "cpu",
                   dtype: torch.dtype = torch.float32) -> ModelBundle:
    root = Path(path) if path else BUNDLED_MODEL_DIR
    if not root.is_dir():
        raise ModelLoadError(f"{root}: model directory not found")
    cfg_path = root / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{cfg_path}: missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{cfg_path}: not valid JSON ({exc})") from exc
    tcfg = _config(TransformerConfig, raw, cfg_path, "transformer")
    dcfg = _config(DVAEConfig, raw, cfg_path, "dvae")
    ccfg = _config(CLIPConfig, raw, cfg_path, "clip")
    sampling = _config(SamplingDefaults, {"sampling": raw.get("sampling", {})}, cfg_path, "sampling")
    tok_path = root / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelLoadError(f"{tok_path}: missing")
    try:
        tokenizer = TextTokenizer.from_file(str(tok_path), tcfg.text_len)
    except Exception as exc:  # tokenizers raises its own untyped Exception
        raise ModelLoadError(f"{tok_path}: not a readable tokenizer ({exc})") from exc
    if tokenizer.vocab_size > tcfg.text_vocab or tokenizer.vocab_size > ccfg.text_vocab:
        raise ModelLoadError(f"{tok_path}: vocabulary of {tokenizer.vocab_size} exceeds "
                             f"the text_vocab in {cfg_path}")
    if dcfg.n_codes != tcfg.image_vocab or dcfg.grid ** 2 != tcfg.image_len:
        raise ModelLoadError(f"{cfg_path}: transformer image_vocab/image_len do not match the dvae")
    models = (DVAE(dcfg), ImageGPT(tcfg), CLIP(ccfg, pad_id=tokenizer.pad_id))
    for module, fname in zip(models, ("dvae", "transformer", "clip")):
        _load_weights(module, root / f"{fname}.safetensors")
        module.to(device=device, dtype=dtype).eval()
    dvae, transformer, clip = models
    return ModelBundle(raw.get("name", root.name), tokenizer, dvae, transformer, ShapesReranker(clip, tokenizer),
                       sampling, kind="tessera")


def save_model_dir(root: str | Path, bundle: ModelBundle, extra: dict | None = None) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if isinstance(bundle.clip, ShapesReranker):  # a loaded bundle: save the CLIP it wraps
        bundle = dataclasses.replace(bundle, clip=bundle.clip.model)
    config = {"name": bundle.name, "transformer": asdict(bundle.transformer.cfg),
              "dvae": asdict(bundle.dvae.cfg), "clip": asdict(bundle.clip.cfg),
              "sampling": asdict(bundle.sampling), **(extra or {})}
    (root / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    bundle.tokenizer.tokenizer.save(str(root / "tokenizer.json"))
    for module, fname in ((bundle.dvae, "dvae"), (bundle.transformer, "transformer"),
                          (bundle.clip, "clip")):
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, str(root / f"{fname}.safetensors"))
