"""What the DALL·E OPs share: one loaded model bundle per (model files, device, precision)."""
from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from tessera.ops.families import ModelBundle, ModelSpec, family_of, load_model
from tessera.server.engine import Op
from tessera.server.engine.platforms import CALL_MODES, DTYPES, compute_for
from tessera.server.engine.platforms.buckets import default_buckets

LOG = logging.getLogger("tessera.ops")
_BUNDLES: dict[tuple, ModelBundle] = {}
_HOLDERS: dict[tuple, int] = {}  # the OPs set up on each bundle (hold_bundle); 0: freed
_LOCK = threading.Lock()


def bundle_for(model: ModelSpec | str | None, device: str, dtype: str = "auto") -> ModelBundle:
    """Load once per process; workers on the same device in the same precision share read-only
    weights.

    `model` is a ModelSpec (a path alone names a model with no extra files); `dtype` an OP's
    setting: "auto" (the device's platform's choice for the model's family: float16 on a GPU,
    bfloat16 on a CPU with bf16 matmuls for the large families, else float32) or a name."""
    return _bundle(*_key(model, device, dtype))


def hold_bundle(model: ModelSpec | str | None, device: str, dtype: str = "auto") -> tuple[ModelBundle, tuple]:
    """bundle_for for an OP that serves with it: the bundle and the key to `release_bundle`
    when the OP is torn down. The last holder's release frees the weights (a model unloaded
    or replaced gives its memory back)."""
    key = _key(model, device, dtype)
    return _bundle(*key, hold=True), key


def release_bundle(key: tuple) -> None:
    with _LOCK:
        _HOLDERS[key] = _HOLDERS.get(key, 1) - 1
        if _HOLDERS[key] <= 0:
            del _HOLDERS[key]
            _BUNDLES.pop(key, None)


def _key(model: ModelSpec | str | None, device: str, dtype: str) -> tuple:
    spec = model if isinstance(model, ModelSpec) else ModelSpec(path=model or None)
    return spec, device, compute_for(device).dtype(dtype, family_of(spec.path))


def _bundle(spec: ModelSpec, device: str, torch_dtype: torch.dtype, hold: bool = False) -> ModelBundle:
    compute = compute_for(device)
    key = (spec, device, torch_dtype)
    with _LOCK:
        if key not in _BUNDLES:
            bundle = load_model(spec, device=device, dtype=torch_dtype)
            for part in (bundle.transformer, bundle.dvae, bundle.clip):
                if isinstance(part, torch.nn.Module):
                    compute.prepare(part, torch_dtype)
            bundle.dtype = torch_dtype
            _BUNDLES[key] = bundle
        if hold:
            _HOLDERS[key] = _HOLDERS.get(key, 0) + 1
        return _BUNDLES[key]


def loaded_bundle(spec: ModelSpec) -> ModelBundle | None:
    """A bundle of `spec` this process has loaded already, on any device, a real one before the
    meta device's (None if none)."""
    with _LOCK:
        found = [(device == "meta", b) for (s, device, _), b in _BUNDLES.items() if s == spec]
    return min(found, key=lambda f: f[0])[1] if found else None


def to_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (deterministic: same pixels, same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


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
class ModelFiles:
    # The model the OP serves: its files, the keys of the configuration's model section
    # (path, bpe_path, vae, clip), which fills it in for every model OP (an OP's own keys win).
    model: ModelSpec = field(default_factory=ModelSpec)


@dataclass
class ModelSettings(ModelFiles):
    # The precision the OP computes in: "auto" is the device's platform's choice for the
    # model's family (float16 on a GPU; bfloat16 on a CPU with bf16 matmuls for DALLE-pytorch
    # and min-dalle, float32 for the bundled model: docs/models.md, Precision), or float32,
    # bfloat16, float16 by name. float32 reproduces the families' own projects exactly.
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}; got {self.dtype!r}")


@dataclass
class ForwardSettings(ModelSettings):
    # The OP's model call: "off" (eager), "padded", "cuda_graph" (one CUDA graph per batch
    # size in forward_buckets, replayed), or "auto": cuda_graph on a CUDA device, falling back
    # to eager if capture fails, and off on a CPU (docs/performance.md, On a GPU).
    forward_mode: str = "auto"
    forward_buckets: list[int] | None = None  # rows (images, prompts); default powers of two up to 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.forward_mode not in ("auto", *(m for m in CALL_MODES if m != "compile")):
            raise ValueError(f"forward_mode: must be one of auto, off, padded, cuda_graph; got {self.forward_mode!r}")
        if self.forward_buckets is not None and not (self.forward_buckets and all(b > 0 for b in self.forward_buckets)):
            raise ValueError(f"forward_buckets: must be positive row counts, got {self.forward_buckets}")


class ModelOp(Op):
    """An OP that uses the model bundle on its worker's device."""

    Settings = ModelSettings

    def setup(self, device: str) -> None:
        self.device = device
        self.compute = compute_for(device)  # what the device's platform says about computing there
        self.bundle, self._held = hold_bundle(self.settings.model, device, self.settings.dtype)

    def teardown(self) -> None:
        held, self._held = getattr(self, "_held", None), None
        if held is not None:
            release_bundle(held)

    def forward(self, fn, rows: list[torch.Tensor], pad: str = "zero"):
        """`fn` as the `forward_mode` setting asks (ForwardSettings): itself, or bucketed by the
        device's platform (platforms/buckets.py) with `rows` as its example inputs. In auto mode
        (the platform's choice: CUDA graphs on a GPU, eager on a CPU) a capture that fails leaves
        the OP eager, with a warning: it still serves."""
        mode = self.settings.forward_mode
        auto = mode == "auto"
        mode = self.compute.call_mode(mode)
        if mode == "off":
            return fn
        buckets = self.settings.forward_buckets or default_buckets(64)
        try:
            return self.compute.bucketed(fn, rows, buckets, mode, pad)
        except Exception as exc:
            if not auto:
                raise
            LOG.warning("%s: %s capture failed, running eagerly: %r", type(self).__name__, mode, exc)
            return fn
