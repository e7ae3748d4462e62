"""Model families: which files are which model, loaded into the contract of base.py.

    spec = ModelSpec(path="dalle.pt", bpe_path="bpe_simple_vocab_16e6.txt.gz", clip="ViT-B-32:clip.bin")
    bundle = load_model(spec, device="cpu", dtype=torch.float32)

`family_of(path)` tells the kind from the files alone, before anything loads:
    None or a directory with config.json        tessera      (the bundled shapes model's layout)
    a directory with dalle_bart_mega/ or _mini/  min-dalle    (DALL·E Mega / Mini)
    a file (train_dalle.py's .pt), or *-ds-cp/   dalle-pytorch
"""
from __future__ import annotations

from pathlib import Path

import torch

from tessera.ops.families.base import (Encoded, ImageDecoder, ModelBundle, ModelLoadError, ModelSpec,
                                       ModelUnsupported, PromptError, PromptTokenizer, Reranker, RowCache,
                                       SamplingDefaults, SamplingModel)

__all__ = ["Encoded", "ImageDecoder", "ModelBundle", "ModelLoadError", "ModelSpec", "ModelUnsupported",
           "PromptError", "PromptTokenizer", "Reranker", "RowCache", "SamplingDefaults", "SamplingModel",
           "family_of", "load_model", "weight_file_bytes"]

FAMILIES = ("tessera", "dalle-pytorch", "min-dalle")


def family_of(path: str | None) -> str:
    """The family of the files at `path`; ModelLoadError when no family's layout fits."""
    if not path:
        return "tessera"
    p = Path(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return "tessera"
        if (p / "dalle_bart_mega").is_dir() or (p / "dalle_bart_mini").is_dir():
            return "min-dalle"
        if p.name.endswith("-ds-cp"):
            return "dalle-pytorch"  # its loader says how to consolidate a DeepSpeed checkpoint
        raise ModelLoadError(
            f"{p}: not a model directory Tessera knows: expected config.json (a Tessera model) or "
            f"dalle_bart_mega/ or dalle_bart_mini/ with vqgan/ beside it (min-dalle's files)")
    if p.is_file():
        return "dalle-pytorch"
    raise ModelLoadError(f"{p}: no such file or directory")


def weight_file_bytes(path: str | None) -> int:
    """The bytes of the sampling model's weight files at `path` (its family's layout), without
    reading them: the bundled model's directory, a DALLE-pytorch .pt, min-dalle's BART halves."""
    family = family_of(path)
    if family == "dalle-pytorch":
        return Path(path).stat().st_size if Path(path).is_file() else sum(
            f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    if family == "min-dalle":
        root = Path(path)
        model = next(root / d for d in ("dalle_bart_mega", "dalle_bart_mini") if (root / d).is_dir())
        return sum((model / f).stat().st_size for f in ("encoder.pt", "decoder.pt") if (model / f).is_file())
    from tessera.ops.info import BUNDLED
    root = Path(path) if path else BUNDLED
    return sum(f.stat().st_size for f in root.glob("transformer.*"))


def load_model(spec: ModelSpec, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ModelBundle:
    """Load the model `spec` names onto `device`; ModelLoadError (or ModelUnsupported) names
    the file at fault and what to do, never a bare traceback."""
    family = family_of(spec.path)
    if family != "dalle-pytorch" and (spec.bpe_path or spec.vae):
        raise ModelUnsupported(f"--bpe-path and --vae apply to DALLE-pytorch checkpoints; "
                               f"{spec.path or 'the bundled model'} is a {family} model")
    if family == "tessera":
        if spec.clip:
            raise ModelUnsupported("--clip applies to DALLE-pytorch and min-dalle models; "
                                   "a Tessera model directory carries its own CLIP")
        from tessera.ops.families.tessera.loading import load_model_dir
        return load_model_dir(spec.path, device=device, dtype=dtype)
    if family == "min-dalle":
        from tessera.ops.families import min_dalle
        bundle = min_dalle.load(spec, device, dtype)
    else:
        from tessera.ops.families import dalle_pytorch
        bundle = dalle_pytorch.load(spec, device, dtype)
    if spec.clip:  # a local OpenCLIP checkpoint reranks for either family (openclip.py)
        from tessera.ops.families.openclip import load_openclip
        bundle.clip = load_openclip(spec.clip, device, dtype)
    return bundle
