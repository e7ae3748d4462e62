"""The min-dalle family: DALL·E Mini / Mega served from min-dalle's own weight files.

Layout (min-dalle's models_root):
    ROOT/dalle_bart_mega/ or ROOT/dalle_bart_mini/   encoder.pt decoder.pt vocab.json merges.txt
    ROOT/vqgan/                                      detoker.pt
Every dimension is read from the weights' shapes; nothing is downloaded. The model is our own
code (model.py, tokenizer.py, vqgan.py) with min-dalle's parameter names; min-dalle itself is
only a test oracle.
"""
from __future__ import annotations

import logging
import os

import torch

from tessera.ops.families.base import (ModelBundle, ModelLoadError, ModelSpec, SamplingDefaults,
                                       load_weights_only)
from tessera.ops.families.min_dalle.model import MinDalleBart, MinDalleCache, MinDalleConfig, build_model, read_config
from tessera.ops.families.min_dalle.tokenizer import MinDalleTokenizer
from tessera.ops.families.min_dalle.vqgan import VQGan, build_vqgan
from tessera.server.engine.platforms import compute_for

__all__ = ["load", "is_min_dalle_dir", "MinDalleBart", "MinDalleCache", "MinDalleConfig",
           "MinDalleTokenizer", "VQGan", "MODEL_DIRS"]

LOG = logging.getLogger("tessera.ops.min_dalle")

MODEL_DIRS = ("dalle_bart_mega", "dalle_bart_mini")  # mega first: min-dalle's default is_mega=True
HUB = "https://huggingface.co/kuprel/min-dalle"
# min-dalle's download_* names on the hub for each local file
_HUB_NAMES = {"encoder.pt": "encoder{}.pt", "decoder.pt": "decoder{}.pt",
              "vocab.json": "vocab{}.json", "merges.txt": "merges{}.txt", "detoker.pt": "detoker.pt"}


# What GetInfo tells a client of a CPU server about the published models, at the CPU's default
# precision (measured: docs/performance/precision-2026-12-06); only for a model of their shape.
CPU_GUIDE = {
    "dalle_bart_mini": "on 2 CPU cores with AVX-512 BF16, in bfloat16, DALL·E Mini takes 7-9 s for one image alone "
                       "and makes one every 2.2-2.4 s at 16 concurrent requests (float32: 22-28 s, and one every "
                       "8 s)",
    "dalle_bart_mega": "on 2 CPU cores with AVX-512 BF16, in bfloat16, Mega (5.2 GB of weights; the shipped "
                       "batch_size 64 fits 24 GiB) is estimated from Mini's step at 5.5x its weights: about 40-50 s "
                       "for one image alone; a GPU is its place",
}
PUBLISHED = {"dalle_bart_mini": (12, 1024), "dalle_bart_mega": (24, 2048)}  # decoder layers, width


def _is_published(cfg: MinDalleConfig, name: str) -> bool:
    """Whether the files are DALL·E Mini's or Mega's shape (not a small model in their layout)."""
    return PUBLISHED.get(name) == (cfg.decoder_layers, cfg.embed)


def _root_and_model(path: str) -> tuple[str, str] | None:
    """(ROOT, model dir name) for min-dalle's ROOT, or for ROOT/dalle_bart_* itself."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        return None
    for name in MODEL_DIRS:
        if os.path.isdir(os.path.join(path, name)):
            return path, name
    if os.path.basename(path) in MODEL_DIRS:
        return os.path.dirname(path), os.path.basename(path)
    return None


def is_min_dalle_dir(path: str | os.PathLike) -> bool:
    """min-dalle's models_root (holding dalle_bart_mega/ or dalle_bart_mini/), or one of those."""
    return _root_and_model(os.fspath(path)) is not None


def _missing(path: str, name: str) -> ModelLoadError:
    mega = name == "dalle_bart_mega"
    file = os.path.basename(path)
    hub_name = _HUB_NAMES[file].format("" if mega else "_mini")
    root = os.path.dirname(os.path.dirname(path))
    return ModelLoadError(
        f"min-dalle: {path} is missing. min-dalle downloads its files from the Hugging Face repo "
        f"kuprel/min-dalle on first use and Tessera never downloads: run min-dalle once with "
        f"is_mega={mega} (MinDalle(models_root={root!r}, is_mega={mega})) to fetch them, or copy "
        f"{hub_name} from the hub ({HUB}/resolve/main/{hub_name}) to {path}")


def _load_state(path: str) -> dict[str, torch.Tensor]:
    """The file's tensors, memory-mapped where the file allows it (nothing is read until used)."""
    try:
        return load_weights_only(path)
    except Exception as e:  # noqa: BLE001 - unpickling and zip errors alike
        raise ModelLoadError(f"min-dalle: cannot load {path}: {e}") from e


def _numel(sd: dict) -> int:
    return sum(t.numel() for t in sd.values() if isinstance(t, torch.Tensor))


def load(spec: ModelSpec, device: str | torch.device, dtype: torch.dtype) -> ModelBundle:
    if spec.path is None:
        raise ModelLoadError("min-dalle: no model path")
    found = _root_and_model(spec.path)
    if found is None:
        raise ModelLoadError(f"min-dalle: {spec.path} holds neither {MODEL_DIRS[0]}/ nor {MODEL_DIRS[1]}/ "
                             "(min-dalle's models_root layout)")
    root, name = found
    model_dir = os.path.join(root, name)
    files = {f: os.path.join(model_dir, f) for f in ("encoder.pt", "decoder.pt", "vocab.json", "merges.txt")}
    files["detoker.pt"] = os.path.join(root, "vqgan", "detoker.pt")
    for path in files.values():
        if not os.path.isfile(path):
            raise _missing(path, name)

    # Memory first: the files' sizes, then (from the mapped tensors, before anything is
    # allocated on the device) the weights' size in the OP's precision.
    file_bytes = sum(os.path.getsize(files[f]) for f in ("encoder.pt", "decoder.pt", "detoker.pt"))
    LOG.info("min-dalle %s: weight files %.1f MiB in %s", name, file_bytes / 2 ** 20, root)
    enc_sd = _load_state(files["encoder.pt"])
    dec_sd = _load_state(files["decoder.pt"])
    vq_sd = _load_state(files["detoker.pt"])
    if "embedding.weight" not in vq_sd:
        raise ModelLoadError(f"min-dalle {files['detoker.pt']} has no embedding.weight: not min-dalle's VQGAN")
    image_vocab = vq_sd["embedding.weight"].shape[0]
    cfg = read_config(enc_sd, dec_sd, image_vocab, files["encoder.pt"], files["decoder.pt"])
    bart = _numel(enc_sd) + _numel(dec_sd) - (cfg.decoder_vocab - cfg.image_vocab) * cfg.embed  # lm_head rows dropped
    vqgan = _numel(vq_sd)
    precision = str(dtype).removeprefix("torch.")
    weights_bytes = torch.tensor([], dtype=dtype).element_size() * (bart + vqgan)  # the VQGAN in the OP's dtype too
    free = compute_for(device).free_memory()
    if free is not None:  # a real device (the meta device only describes the model: no memory held)
        LOG.info("min-dalle %s: %d layers, %d wide; weights %.2f GiB as %s (BART %d M, VQGAN %d M parameters; "
                 "%.1f GiB free on %s)", name, cfg.decoder_layers, cfg.embed, weights_bytes / 2 ** 30, precision,
                 bart // 10 ** 6, vqgan // 10 ** 6, free / 2 ** 30, device)
    if free is not None and weights_bytes > 0.9 * free:  # refuse before allocating: no out-of-memory kill
        raise ModelLoadError(
            f"min-dalle {name}: its weights need {weights_bytes / 2 ** 30:.1f} GiB as {precision} and "
            f"{free / 2 ** 30:.1f} GiB is free on {device}"
            + (" (dtype bfloat16 or float16 halves them)" if dtype == torch.float32 else ""))

    tokenizer = MinDalleTokenizer.from_files(files["vocab.json"], files["merges.txt"], cfg.text_len)
    top = max(tokenizer.vocab.values())
    if top >= cfg.text_vocab:
        raise ModelLoadError(f"min-dalle {files['vocab.json']} has id {top}, past the encoder's "
                             f"{cfg.text_vocab} text tokens: vocab.json and encoder.pt do not go together")
    transformer = build_model(cfg, enc_sd, dec_sd, device, dtype, files["encoder.pt"], files["decoder.pt"])
    del enc_sd, dec_sd
    try:
        dvae = build_vqgan(vq_sd, device, dtype)
    except RuntimeError as e:
        raise ModelLoadError(f"min-dalle {files['detoker.pt']}: not min-dalle's VQGAN: {e}") from e
    del vq_sd

    details = {
        "layers": cfg.decoder_layers, "encoder_layers": cfg.encoder_layers, "embed": cfg.embed,
        "heads": cfg.heads, "glu": cfg.decoder_glu, "encoder_glu": cfg.encoder_glu,
        "text_vocab": cfg.text_vocab, "text_len": cfg.text_len, "image_vocab": cfg.image_vocab,
        "decoder_vocab": cfg.decoder_vocab, "image_len": cfg.image_len,
        "weights_bytes": weights_bytes, "precision": precision, "files_bytes": file_bytes,
        # Where the files are and the host's memory are for the log (above), not for any client.
        **({"on_a_cpu": CPU_GUIDE[name]} if str(device).startswith("cpu") and _is_published(cfg, name) else {}),
    }
    return ModelBundle(
        name=name, tokenizer=tokenizer, dvae=dvae, transformer=transformer, clip=None,
        sampling=SamplingDefaults(temperature=1.0, top_k=256, top_p=1.0, guidance_scale=16.0),
        kind="min-dalle", details=details)
