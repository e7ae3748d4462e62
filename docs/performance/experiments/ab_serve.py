"""Two checkouts of Tessera served side by side: interleaved rounds of closed-loop load on each
family's model, for before/after figures (docs/performance/precision-2026-12-06).

    python docs/performance/experiments/ab_serve.py --out DIR --rounds 2 \
        --contender base=/tmp/base-venv/bin/python:/tmp/base-py \
        --contender new=/tmp/base-venv/bin/python:/tmp/new-py \
        --model min-dalle=/tmp/md-root/mini:1x2,16x16 --model bundled=:1x8,8x32,32x96

A contender is NAME=PYTHON:PYTHONPATH (PYTHONPATH holding a `tessera` folder whose server, ops,
bench, clients and v1 link to one checkout); a model is NAME=PATH:CxN,...[:K] (empty PATH: the
bundled model; C concurrent clients, N requests, one image each of K candidates, default 1). Round r serves every model
with every contender in turn (`tessera serve --model PATH --port 0`, the shipped configuration),
runs its levels after one warm-up request and stops the server. Each row keeps the load average
before it, the server's start-up lines (precision, memory) and its peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from tessera.bench.families import closed_loop

SERVING = re.compile(r"tessera: serving .*?:(\d+)[;\s]")
PROMPTS = ["a red circle on a blue background", "an armchair in the shape of an avocado",
           "a small green square at the bottom", "a painting of a fox sitting in a field at sunrise",
           "a large yellow triangle in the top left", "a snowy mountain above a small lake",
           "a cat wearing sunglasses on a beach", "a blue star on a white background"]
# The bundled model's captions (its 32-token context and closed vocabulary: ../shared/SHAPES.md)
SHAPES = ["a red circle on a blue background", "a small green square at the bottom",
          "a large yellow triangle in the top left", "a small blue circle in the middle"]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def serve(python: str, pythonpath: str, model: str, log: Path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": pythonpath, "RAY_ADDRESS": "local"}
    cmd = [python, "-m", "tessera.server.cli", "serve", "--port", "0", "--http-port", "-1", "--metrics-port", "-1"]
    if model:
        cmd += ["--model", model]
    f = log.open("w")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, text=True)
    deadline = time.monotonic() + 900
    while not (m := SERVING.search(log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, int(m.group(1))


def peak_rss_gib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--contender", action="append", required=True, help="NAME=PYTHON:PYTHONPATH")
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH:CxN,CxN")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    contenders = [(c.split("=", 1)[0], *c.split("=", 1)[1].split(":", 1)) for c in args.contender]
    models = []
    for m in args.model:
        name, rest = m.split("=", 1)
        path, levels = rest.rsplit(":", 1)
        candidates = 1
        if "x" not in levels:  # NAME=PATH:LEVELS:CANDIDATES
            candidates, (path, levels) = int(levels), path.rsplit(":", 1)
        models.append((name, path, [tuple(map(int, lv.split("x"))) for lv in levels.split(",")], candidates))
    settings = {"threads_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))},
                "cpus": os.cpu_count(), "contenders": contenders, "models": models}
    rows = []
    for r in range(args.rounds):
        for mname, path, levels, candidates in models:
            for cname, python, pythonpath in contenders:
                log = Path(tempfile.mkdtemp()) / "serve.log"
                t = time.perf_counter()
                proc, port = serve(python, pythonpath, path, log)
                start_s = time.perf_counter() - t
                target = f"127.0.0.1:{port}"
                try:
                    prompts = PROMPTS if path else SHAPES
                    closed_loop(target, 1, 1, 10 ** 6, prompts)  # warm-up
                    for c, n in levels:
                        la = loadavg()
                        row = {"round": r, "model": mname, "contender": cname, "loadavg_before": la,
                               "start_s": start_s, "c": c, "candidates": candidates, **closed_loop(target, c, n, 1000 * r + 100 * c, prompts, candidates)}
                        row["server_peak_rss_gib"] = peak_rss_gib(proc.pid)
                        row["server_lines"] = [ln for ln in log.read_text().splitlines()
                                               if any(w in ln for w in ("cache for", "weights", "precision", "serving"))]
                        rows.append(row)
                        print(f"round {r} {mname} {cname} c={c}: {row['images_per_s']:.4f} images/s "
                              f"p50 {row['latency_p50_s']:.2f} s p99 {row['latency_p99_s']:.2f} s (load {la})",
                              flush=True)
                        (args.out / "rows.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
                finally:
                    proc.terminate()
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
