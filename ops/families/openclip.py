"""An OpenCLIP checkpoint as a Reranker: `--clip ARCH:PATH` (e.g. "ViT-B-32:/models/clip.bin").

open_clip builds the model and its tokenizer from a local file only (never a download). Image
preprocessing is done here in torch, as open_clip's validation transform does it with
torchvision and PIL (torchvision is not needed): Resize(size, bicubic) of the shortest side,
CenterCrop(size), /255, Normalize(mean, std) from the model's preprocess_cfg; the 'squash' and
'longest' resize modes are followed too.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from tessera.ops.families.base import ModelLoadError, ModelUnsupported

SPEC_EXAMPLE = "ViT-B-32:/models/open_clip_pytorch_model.bin"
_SCHEMAS = ("hf-hub", "local-dir")


def _import_open_clip():
    try:
        import open_clip
    except Exception as e:  # noqa: BLE001 - missing, or a torchvision that does not load
        raise ModelLoadError(
            f"--clip needs the open_clip package, which cannot be imported ({type(e).__name__}: {e}): "
            "install open-clip-torch, with a torchvision built for the installed torch") from e
    return open_clip


def parse_spec(spec: str) -> tuple[str, str]:
    """'ARCH:PATH' split at the first colon."""
    arch, sep, path = (spec or "").partition(":")
    arch, path = arch.strip(), path.strip()
    if not sep or not arch or not path:
        raise ModelLoadError(f"--clip {spec!r}: expected ARCH:PATH, an OpenCLIP architecture and a "
                             f"local checkpoint file, e.g. {SPEC_EXAMPLE}")
    if arch in _SCHEMAS:
        raise ModelLoadError(f"--clip {spec!r}: {arch}: models are not served (they load from the "
                             f"network or a directory); give ARCH:PATH, e.g. {SPEC_EXAMPLE}")
    return arch, path


def _size2(size) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return (int(size[-2]), int(size[-1])) if len(size) >= 2 else (int(size[0]), int(size[0]))
    return int(size), int(size)


class ImagePreprocess:
    """open_clip's validation transform on (N, H, W, 3) uint8 tensors."""

    def __init__(self, cfg: dict, image_size):
        self.size = _size2(cfg.get("size", image_size) or image_size)
        self.mean = tuple(float(m) for m in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(float(s) for s in cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.interpolation = cfg.get("interpolation", "bicubic") or "bicubic"
        self.resize_mode = cfg.get("resize_mode", "shortest") or "shortest"
        self.fill_color = int(cfg.get("fill_color", 0) or 0)
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ModelUnsupported(f"OpenCLIP preprocessing with {self.interpolation!r} interpolation")
        if self.resize_mode not in ("shortest", "squash", "longest"):
            raise ModelUnsupported(f"OpenCLIP preprocessing with resize_mode {self.resize_mode!r}")

    def _resize(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x (N, 3, H, W) float in [0, 255] -> (N, 3, h, w), as PIL writes it back to uint8."""
        if (h, w) == tuple(x.shape[-2:]):
            return x
        if self.interpolation == "nearest":
            return F.interpolate(x, size=(h, w), mode="nearest")
        x = F.interpolate(x, size=(h, w), mode=self.interpolation, align_corners=False, antialias=True)
        return x.clamp_(0, 255).round_()

    def __call__(self, pixels: torch.Tensor, device, dtype) -> torch.Tensor:
        if pixels.dim() != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"pixels must be (N, H, W, 3) uint8, got {tuple(pixels.shape)}")
        x = pixels.to(device).permute(0, 3, 1, 2).float()
        th, tw = self.size
        h, w = x.shape[-2:]
        if self.resize_mode == "squash":
            x = self._resize(x, th, tw)
        elif self.resize_mode == "shortest":
            if th == tw:   # torchvision Resize(int): the short side to size, the long one truncated
                if h <= w:
                    nh, nw = th, int(th * w / h)
                else:
                    nh, nw = int(tw * h / w), tw
            else:          # ResizeKeepRatio(longest=0)
                ratio = min(h / th, w / tw)
                nh, nw = round(h / ratio), round(w / ratio)
            x = self._resize(x, nh, nw)
            top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
            x = x[..., top:top + th, left:left + tw]
        else:              # longest: ResizeKeepRatio(longest=1) + CenterCropOrPad
            ratio = max(h / th, w / tw)
            nh, nw = round(h / ratio), round(w / ratio)
            x = self._resize(x, nh, nw)
            out = x.new_full((x.shape[0], 3, th, tw), float(self.fill_color))
            top, left = (th - nh) // 2, (tw - nw) // 2
            ch, cw = min(nh, th), min(nw, tw)
            st, sl = max(0, (nh - th) // 2), max(0, (nw - tw) // 2)
            out[..., max(0, top):max(0, top) + ch, max(0, left):max(0, left) + cw] = \
                x[..., st:st + ch, sl:sl + cw]
            x = out
        x = x / 255.0
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)


class OpenCLIPReranker:
    """A Reranker over an open_clip model: unit float32 embeddings of prompts and images."""

    def __init__(self, arch: str, model, tokenizer, device, dtype, preprocess_cfg: dict):
        """`preprocess_cfg`: open_clip's get_model_preprocess_cfg(model) ({} for the legacy attributes)."""
        self.name = f"OpenCLIP {arch}"
        self.model = model
        self._tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.context = int(getattr(tokenizer, "context_length", 0) or model.context_length)
        self._preprocess = ImagePreprocess(dict(preprocess_cfg), model.visual.image_size)

    def tokenize(self, prompt: str) -> list[int]:
        return self._tokenizer([prompt])[0].tolist()

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, 3, size, size) what encode_image feeds the model."""
        return self._preprocess(pixels, self.device, self.dtype)

    @torch.no_grad()
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long).to(self.device)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        return F.normalize(self.model.encode_text(ids).float(), dim=-1)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(self.preprocess(pixels)).float(), dim=-1)


def load_openclip(spec: str, device, dtype) -> OpenCLIPReranker:
    """The Reranker for `--clip ARCH:PATH` on `device` in `dtype`."""
    arch, path = parse_spec(spec)
    path = os.path.abspath(os.path.expanduser(path))   # a path, never taken for a pretrained tag
    if not os.path.isfile(path):
        raise ModelLoadError(f"--clip {spec!r}: no such file {path} (Tessera never downloads "
                             f"CLIP weights: give a local checkpoint, e.g. {SPEC_EXAMPLE})")
    open_clip = _import_open_clip()
    config = open_clip.get_model_config(arch)
    if config is None:
        raise ModelLoadError(f"--clip {spec!r}: {arch!r} is not an OpenCLIP architecture this "
                             f"open_clip knows (see open_clip.list_models()), e.g. {SPEC_EXAMPLE}")
    text_cfg = config.get("text_cfg", {}) or {}
    if text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name") or "siglip" in arch.lower():
        raise ModelUnsupported(f"--clip {spec!r}: {arch}'s text tower or tokenizer comes from the "
                               "HuggingFace hub, which Tessera does not download; use a CLIP "
                               "architecture with open_clip's own BPE tokenizer")
    try:
        model = open_clip.create_model(arch, pretrained=path)
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError, KeyError, ...
        raise ModelLoadError(f"--clip {spec!r}: open_clip cannot load {path} as {arch}: "
                             f"{type(e).__name__}: {e}") from e
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    try:
        preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    except Exception:  # noqa: BLE001 - an older open_clip: the legacy attributes
        preprocess_cfg = {}
    return OpenCLIPReranker(arch, model, tokenizer, device, dtype, preprocess_cfg)
