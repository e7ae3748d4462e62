"""What a model directory declares, read from config.json alone (no torch, no weights)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tessera.ops.shapes.vocabulary import VOCABULARY

BUNDLED = Path(__file__).resolve().parent / "bundled" / "shapes-dalle"


def describe_model(model_dir: str | None) -> dict:
    root = Path(model_dir) if model_dir else BUNDLED
    cfg = json.loads((root / "config.json").read_text())
    size = cfg["dvae"]["image_size"]
    return {"name": cfg.get("name", root.name), "image_width": size, "image_height": size,
            "text_context": cfg["transformer"]["text_len"], "image_tokens": cfg["transformer"]["image_len"],
            "sampling": cfg.get("sampling", {}),
            # What the captions it was trained on name: {"colors": [{"en", "zh"}, ...], ...}.
            "vocabulary": asdict(VOCABULARY)}
