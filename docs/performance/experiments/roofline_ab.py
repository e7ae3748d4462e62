"""The roofline share of each family's decode step at the c=16 / c=32 batches, in the precision
and attention span main served before 2026-12-06 (float32, the whole cache behind a mask) and
in today's defaults (dtype auto, the live prefix), with the families bench's profiles and the
roofline of bench/roofline.py; one process, the two interleaved per round.

    python docs/performance/experiments/roofline_ab.py --min-dalle /tmp/md-root/mini \
        --dalle-pytorch /tmp/dp-root/dalle-512x8.pt --rounds 2 --out docs/performance/precision-2026-12-06/roofline.json
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from tessera.bench.families import _profile_md_ours, _profile_ours
from tessera.bench.roofline import measure_peak, peak_line, roofline_line

SETTINGS = {"before (float32, whole cache)": ("float32", False), "after (auto, live prefix)": ("auto", True)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-dalle", type=Path)
    ap.add_argument("--dalle-pytorch", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    peak = measure_peak("cpu", seconds=1.0)
    print(peak_line(peak), flush=True)
    out = {"peak": peak_line(peak), "loadavg": [], "threads": torch.get_num_threads(),
           "omp": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "MKL_"))}, "rows": []}
    for r in range(args.rounds):
        for label, (dtype, live) in SETTINGS.items():
            la = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            if args.min_dalle:
                p = _profile_md_ours(args.min_dalle, rows=32, images=1, peak=peak, dtype=dtype, live=live)
                line = roofline_line(f"min-dalle, 32 rows (c=16), {label}", p["_roofline"])
                out["rows"].append({"round": r, "family": "min-dalle", "setting": label, "load": la,
                                    "step_ms": p["total per step"], "vqgan_s": p["_vqgan_s_per_image"],
                                    "roofline": p["_roofline"], "line": line})
                print(r, la, line, flush=True)
            if args.dalle_pytorch:
                p = _profile_ours(args.dalle_pytorch, 32, peak, dtype=dtype, live=live)
                line = roofline_line(f"dalle-pytorch, 32 rows (c=32), {label}", p["_roofline"])
                out["rows"].append({"round": r, "family": "dalle-pytorch", "setting": label, "load": la,
                                    "step_ms": p["total"], "roofline": p["_roofline"], "line": line})
                print(r, la, line, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
