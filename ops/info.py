"""What a served model declares, for GetInfo, the page and the clients.

The bundled layout is described from its config.json alone (no torch, no weights); another
family from the bundle this process loaded for the OPs (or, with the OPs in other processes,
built here on the meta device: its files are read, no weight memory is kept).
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.ops.families import ModelBundle, ModelSpec, family_of
from tessera.ops.shapes.vocabulary import VOCABULARY

if TYPE_CHECKING:
    from tessera.server.engine import GraphConfig

BUNDLED = Path(__file__).resolve().parent / "bundled" / "shapes-dalle"


def op_precisions(graph: GraphConfig) -> dict[str, str]:
    """The precision each model OP of `graph` computes in, by OP name: its `dtype` setting as
    its devices' platforms resolve it for its model's family ("bfloat16"; "cpu float32,
    cuda:0 float16" where its devices differ). Nothing is loaded."""
    from tessera.server.engine.platforms import compute_for
    out = {}
    for name, op in graph.ops.items():
        if "dtype" not in {f.name for f in fields(op.op_class.Settings)}:
            continue
        family = family_of(ModelSpec.of(op.settings.get("model")).path)
        setting = op.settings.get("dtype", "auto")
        by_device = {d: str(compute_for(d).dtype(setting, family)).removeprefix("torch.") for d in op.devices}
        names = set(by_device.values())
        out[name] = names.pop() if len(names) == 1 else ", ".join(f"{d} {t}" for d, t in by_device.items())
    return out


def describe_model(spec: ModelSpec) -> dict:
    if family_of(spec.path) == "tessera":
        root = Path(spec.path) if spec.path else BUNDLED
        cfg = json.loads((root / "config.json").read_text())
        size = cfg["dvae"]["image_size"]
        return {"name": cfg.get("name", root.name), "kind": "tessera", "image_width": size, "image_height": size,
                "text_context": cfg["transformer"]["text_len"], "image_tokens": cfg["transformer"]["image_len"],
                "sampling": cfg.get("sampling", {}), "tokenizer": "byte-level BPE (its tokenizer.json)",
                "rerank": True, "reranker": "the shapes CLIP", "details": {},
                # The family's own field (GetInfo's ShapesFamily): what the captions it was
                # trained on name, {"colors": [{"en", "zh"}, ...], ...}.
                "shapes": {"vocabulary": asdict(VOCABULARY)}}
    from tessera.ops.shared import bundle_for, loaded_bundle  # torch: only for the other families
    return bundle_info(loaded_bundle(spec) or bundle_for(spec, "meta"))  # meta: no weight memory kept


def bundle_info(bundle: ModelBundle) -> dict:
    """A loaded family's description (an open vocabulary: no word list)."""
    size = bundle.image_size
    return {"name": bundle.name, "kind": bundle.kind, "image_width": size, "image_height": size,
            "text_context": bundle.transformer.text_len, "image_tokens": bundle.transformer.image_len,
            "sampling": asdict(bundle.sampling), "tokenizer": bundle.tokenizer.name,
            "rerank": bundle.clip is not None,
            "reranker": bundle.clip.name if bundle.clip is not None else "",
            "details": {str(k): str(v) for k, v in bundle.details.items()},
            "vocabulary": {"colors": [], "shapes": [], "sizes": [], "positions": []}}
