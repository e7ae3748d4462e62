"""The quality contract of bfloat16 at real shapes (random weights): teacher-forced next-token
agreement over a whole image and decoded pixel levels, float32 against bfloat16 of the same
files, with ops/families/quality.py (what the tests use on tiny models).

    python docs/performance/experiments/precision_quality.py --model /tmp/md-root/mini \
        --model /tmp/dp-root/dalle-512x8.pt --out docs/performance/precision-2026-12-06/quality.json
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tessera.ops.families import ModelSpec, load_model
from tessera.ops.families.quality import pixel_levels, teacher_forced
from tessera.server.engine.platforms import compute_for

PROMPTS = ["a red circle on a blue background", "an armchair in the shape of an avocado"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "models": {}}
    for path in args.model:
        t = time.perf_counter()
        spec = ModelSpec(path=path)
        ref, low = load_model(spec, "cpu", torch.float32), load_model(spec, "cpu", torch.bfloat16)
        for part in (low.transformer, low.dvae):
            compute_for("cpu").prepare(part, torch.bfloat16)
        text = torch.tensor([ref.tokenizer.encode_prompt(p).ids for p in PROMPTS])
        steps = teacher_forced(ref.transformer, low.transformer, text)
        grids = torch.randint(0, ref.transformer.image_vocab, (2, ref.transformer.image_len),
                              generator=torch.Generator().manual_seed(0))
        px = pixel_levels(ref.dvae, low.dvae, grids)
        out["models"][path] = {"kind": ref.kind, "steps": asdict(steps), "pixels": asdict(px),
                               "seconds": time.perf_counter() - t}
        print(path, out["models"][path], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
