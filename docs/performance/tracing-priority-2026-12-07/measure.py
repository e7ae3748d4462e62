"""Issue 27's measures on the bundled model, interleaved rounds (results.md beside this file).

    python docs/performance/tracing-priority-2026-12-07/measure.py --out DIR --rounds 3 \
        --base /tmp/base-py --new /tmp/new-py

--base/--new: PYTHONPATH folders holding a `tessera` folder whose server, ops, bench, clients and
v1 link to one checkout (main before issue 27, and this branch). Each round serves, in turn:
`main` (base), `off` (this branch, tracing off), `on` (this branch, every request traced, spans
exported over OTLP/gRPC to a receiver in this script), c=32 closed loop, one image each; then
`priority`, `fcfs` and `preempt` (graph.policy priority, fcfs, and priority with graph.preempt):
32 clients of priority-5 requests of --load-images images each (8: 256 rows asked of the sampler's
2 x 64 slots, so a wave of rows always waits) saturate the server while one client sends
priority-0 one-image requests one after another; the trickle's p50/p99.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import re
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import yaml

SERVING = re.compile(r"tessera: serving .*?:(\d+)[;\s]")
SHAPES = ["a red circle on a blue background", "a small green square at the bottom",
          "a large yellow triangle in the top left", "a small blue circle in the middle"]


def receiver() -> tuple[object, int, list]:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
    got = [0]

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            got[0] += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, got


def serve(pythonpath: str, log: Path, env: dict, config: str | None) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "tessera.server.cli", "serve", "--port", "0", "--http-port", "-1",
           "--metrics-port", "-1"] + (["--config", config] if config else [])
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
                            env={**full, "PYTHONPATH": pythonpath, **env})
    while not (m := SERVING.search(log.read_text())):
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.5)
    return proc, int(m.group(1))


async def closed_loop(target: str, c: int, n: int, seed0: int, priority: int = 0, trickle: int = 0,
                      images: int = 1) -> dict:
    from tessera.clients import AsyncTesseraClient
    client = AsyncTesseraClient(target, timeout=3600)
    todo, lat, urgent = iter(range(n)), [], []
    busy = asyncio.Event()

    async def one():
        for i in todo:
            t = time.perf_counter()
            await client.generate(SHAPES[i % 4], num_images=images, seed=seed0 + i, priority=priority)
            lat.append(time.perf_counter() - t)
        busy.set()

    async def trickler():
        for i in range(trickle):
            if busy.is_set():
                break
            t = time.perf_counter()
            await client.generate(SHAPES[i % 4], num_images=1, seed=seed0 + 10**6 + i, priority=0)
            urgent.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(c)), trickler())
    wall = time.perf_counter() - t0
    await client.close()
    lat.sort(), urgent.sort()
    out = {"images": n * images, "wall_s": wall, "images_per_s": n * images / wall,
           "p50_s": lat[len(lat) // 2], "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}
    if urgent:
        out |= {"trickle": len(urgent), "trickle_p50_s": urgent[len(urgent) // 2],
                "trickle_p99_s": urgent[min(len(urgent) - 1, int(0.99 * len(urgent)))]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("-n", type=int, default=96)
    ap.add_argument("--load-images", type=int, default=8,
                    help="images per request of the priority-5 load (8: 32 clients ask 256 rows of the 128 slots)")
    ap.add_argument("--only", nargs="*", help="run only these (main off on priority fcfs preempt)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    collector, port, spans = receiver()
    sys.path.insert(0, args.new)
    from tessera.server.defaults import DEFAULT_CONFIG
    configs = {}
    for policy in ("priority", "fcfs", "preempt"):
        raw = copy.deepcopy(DEFAULT_CONFIG)
        raw["graph"]["policy"] = "fcfs" if policy == "fcfs" else "priority"
        raw["graph"]["preempt"] = policy == "preempt"
        configs[policy] = str(out / f"{policy}.yaml")
        Path(configs[policy]).write_text(yaml.safe_dump(raw))
    runs = [("main", args.base, {}, None, 0, 0, 1), ("off", args.new, {}, None, 0, 0, 1),
            ("on", args.new, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}"}, None, 0, 0, 1),
            ("priority", args.new, {}, configs["priority"], 5, 10**6, args.load_images),
            ("fcfs", args.new, {}, configs["fcfs"], 5, 10**6, args.load_images),
            ("preempt", args.new, {}, configs["preempt"], 5, 10**6, args.load_images)]
    runs = [r for r in runs if not args.only or r[0] in args.only]
    rows = []
    for r in range(args.rounds):
        for name, path, env, config, priority, trickle, images in runs:
            proc, p = serve(path, out / f"{name}-{r}.log", env, config)
            try:
                target = f"127.0.0.1:{p}"
                asyncio.run(closed_loop(target, 1, 2, 10**7))  # warm-up
                before = spans[0]
                row = {"round": r, "run": name, "load": os.getloadavg()[0],
                       **asyncio.run(closed_loop(target, 32, args.n, 1000 * r, priority, trickle, images))}
                if name == "on":
                    time.sleep(6)  # the batch processor's delay: the spans of the run arrive
                    row["spans"] = spans[0] - before
            finally:
                proc.terminate()
                proc.wait(60)
            rows.append(row)
            print(json.dumps(row), flush=True)
            (out / "rows.json").write_text(json.dumps(rows, indent=1))
    collector.stop(0)


if __name__ == "__main__":
    main()
