"""What the DALL·E OPs share: one loaded model bundle per (directory, device, precision)."""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from tessera.ops.models.loading import ModelBundle, load_model_dir
from tessera.server.engine import Op

_BUNDLES: dict[tuple, ModelBundle] = {}
_LOCK = threading.Lock()


HALF = {False: torch.float32, True: torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16}


def bundle_for(model_dir: str | None, device: str, half: bool | str = False) -> ModelBundle:
    """Load once per process; workers on the same device share read-only weights.

    `half` (CUDA only; a CPU keeps fp32): true or "fp16" for float16, "bf16" for bfloat16."""
    if half not in HALF:
        raise ValueError(f"half must be true, false, 'fp16' or 'bf16', got {half!r}")
    dtype = HALF[half] if device.startswith("cuda") else torch.float32
    key = (model_dir or "", device, dtype)
    with _LOCK:
        if key not in _BUNDLES:
            _BUNDLES[key] = load_model_dir(model_dir, device=device, dtype=dtype)
        return _BUNDLES[key]


def to_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (deterministic: same pixels, same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def candidate_seed(seed: int, index: int) -> int:
    """Candidate i's seed; candidate 0 keeps the request's seed, so a returned seed sent
    back with num_candidates=1 regenerates that very image (splitmix64 for the rest)."""
    if index == 0:
        return seed
    z = (seed + index * 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFF_FFFF_FFFF_FFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFF_FFFF_FFFF_FFFF
    return (z ^ (z >> 31)) or 1


@dataclass
class ModelSettings:
    model_dir: str | None = None  # None: the bundled model
    half: bool | str = False      # on a CUDA device: true or "fp16" float16, "bf16" bfloat16 (a CPU keeps fp32)

    def __post_init__(self) -> None:
        if self.half not in HALF:
            raise ValueError(f"half: must be true, false, 'fp16' or 'bf16', got {self.half!r}")


class ModelOp(Op):
    """An OP that uses the model bundle on its worker's device."""

    Settings = ModelSettings

    def setup(self, device: str) -> None:
        self.device = device
        self.bundle = bundle_for(self.settings.model_dir, device, self.settings.half)
