"""Several models in one server (issue 26), measured (docs/performance/models-2026-12-06):

1. what a second model costs the first: the bundled model alone against the bundled model with
   a DALLE-pytorch checkpoint loaded beside it, only the bundled model asked, closed loop at
   c clients, in interleaved rounds (each round starts both servers afresh, in turn);
2. how long a replacement takes, from the Load call to the first request the new version
   serves, for the bundled model and for the DALLE-pytorch checkpoint (each replaced by a copy
   of its files, so the new version really loads, nothing shared with the old one).

    python docs/performance/experiments/models_ab.py --dalle /tmp/dp-root/dalle-512x8.pt \
        --out docs/performance/models-2026-12-06 --rounds 3 --concurrency 32 --requests 96

Every server is `tessera serve` from this checkout with the shipped configuration, on 2 torch
threads per process as the CPU platform chooses them, no OMP_*/GOMP_* variables.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml

from tessera.bench.families import closed_loop
from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc

SERVING = re.compile(r"tessera: serving .*? on 127\.0\.0\.1:(\d+)[;\s]")
SHAPES = ["a red circle on a blue background", "a small green square at the bottom",
          "a large yellow triangle in the top left", "a small blue circle in the middle"]
TOKEN = "bench-admin-token"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def serve(config: dict, workdir: Path, label: str) -> tuple[subprocess.Popen, int]:
    path = workdir / f"{label}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = workdir / f"{label}.log"
    f = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "tessera.server.cli", "serve", "--config", str(path)],
                            stdout=f, stderr=subprocess.STDOUT, text=True, env={**os.environ, "RAY_ADDRESS": "local"})
    deadline = time.monotonic() + 900
    while not (m := SERVING.search(log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{label} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, int(m.group(1))


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def config(models: list[dict], token_file: Path | None = None) -> dict:
    server = {"port": 0, "http_port": -1, "metrics_port": -1}
    if token_file is not None:
        server.update(admin=True, token_file=str(token_file))
    return {"models": models, "server": server}


def cost_of_a_second_model(dalle: str, workdir: Path, rounds: int, c: int, n: int) -> list[dict]:
    rows = []
    for r in range(rounds):
        for label, models in (("alone", [{"name": "shapes"}]),
                              ("beside", [{"name": "shapes"}, {"name": "dalle", "path": dalle}])):
            before = loadavg()
            proc, port = serve(config(models), workdir, f"cost-{label}-{r}")
            try:
                target = f"127.0.0.1:{port}"
                closed_loop(target, 1, 2, 10_000, SHAPES)  # warm-up
                got = closed_loop(target, c, n, 1000 * r, SHAPES)
            finally:
                stop(proc)
            rows.append({"round": r, "server": label, "c": c, "n": n, "loadavg_before": before, **got})
            print(json.dumps(rows[-1]), flush=True)
    return rows


async def replace_once(port: int, name: str, path: str, prompt: str) -> dict:
    meta = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        admin, gen = pb_grpc.ModelControlStub(channel), pb_grpc.ImageGenerationStub(channel)
        request = pb.GenerateRequest(prompt=prompt, num_images=1, num_candidates=1, seed=7, model=name)
        await gen.Generate(request, metadata=meta, timeout=600)  # the old version warm
        t0 = time.perf_counter()
        status = await admin.Load(pb.LoadModelRequest(name=name, model=pb.ModelSection(path=path)),
                                  metadata=meta, timeout=900)
        loaded = time.perf_counter()
        await gen.Generate(request, metadata=meta, timeout=600)
        served = time.perf_counter()
    return {"version": status.version, "load_call_s": loaded - t0, "first_request_s": served - t0,
            "server_load_ms": status.load_ms}


def replacement_times(dalle: str, workdir: Path, rounds: int) -> list[dict]:
    token = workdir / "token"
    token.write_text(TOKEN)
    from tessera.ops.families.tessera.loading import BUNDLED_MODEL_DIR as BUNDLED_DIR  # the bundled model's files, copied to load anew
    copies = {"shapes": workdir / "shapes-copy", "dalle": workdir / "dalle-copy.pt"}
    shutil.copytree(BUNDLED_DIR, copies["shapes"], dirs_exist_ok=True)
    shutil.copy(dalle, copies["dalle"])
    rows = []
    for r in range(rounds):
        for name, original, prompt in (("shapes", None, SHAPES[0]), ("dalle", dalle, "a red circle")):
            models = [{"name": name, **({"path": original} if original else {})}]
            proc, port = serve(config(models, token), workdir, f"replace-{name}-{r}")
            try:
                before = loadavg()
                got = asyncio.run(replace_once(port, name, str(copies[name]), prompt))
            finally:
                stop(proc)
            rows.append({"round": r, "model": name, "loadavg_before": before, **got})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dalle", required=True, help="a DALLE-pytorch checkpoint (.pt)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--skip-cost", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cost = [] if args.skip_cost else cost_of_a_second_model(args.dalle, work, args.rounds, args.concurrency,
                                                                args.requests)
        replace = replacement_times(args.dalle, work, args.rounds)
    ratios = [b["images_per_s"] / a["images_per_s"] for a, b in zip(cost[0::2], cost[1::2])]
    summary = {
        "beside_over_alone_images_per_s": spread(ratios) if ratios else None,
        "alone_images_per_s": spread([x["images_per_s"] for x in cost[0::2]]) if cost else None,
        "beside_images_per_s": spread([x["images_per_s"] for x in cost[1::2]]) if cost else None,
        **{f"replace_{m}_first_request_s": spread([x["first_request_s"] for x in replace if x["model"] == m])
           for m in ("shapes", "dalle")},
        **{f"replace_{m}_load_call_s": spread([x["load_call_s"] for x in replace if x["model"] == m])
           for m in ("shapes", "dalle")},
    }
    (args.out / "models.json").write_text(json.dumps({"cost": cost, "replace": replace, "summary": summary},
                                                     indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
