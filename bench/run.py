"""`tessera bench`: throughput and latency, measured side by side.

    tessera bench --compare serial,static,default,offline --concurrency 1,8,32 --num-candidates 4
    tessera bench --compare default,offline --concurrency 1,32 --rounds 5   # each round's ratios, median
    tessera bench --server 127.0.0.1:50051 --metrics http://127.0.0.1:9090/metrics
    tessera bench --compare default,ceiling --concurrency 1,32 --contend 1  # one core kept busy meanwhile
    tessera bench --compare default,generic --concurrency 1,8,32 --rounds 3  # against a generic batching server
    tessera bench --compare default,offline --device cuda:0 --dtype float16     # the model OPs on a GPU
    tessera bench --engine-only
    tessera bench --kv

`ceiling` is the offline pipeline once per --threadings setting, each in a fresh process,
keeping the best throughput and the best single-request latency (bench/ceiling.py).
`generic` is a generic request-level batching server (LitServe, batches of up to 16
requests, 5 ms) running the same OPs, measured over HTTP/JSON by the same loops
(bench/generic.py).

After the rounds, the roofline (bench/roofline.py; --no-roofline skips it): this machine's peak
(a matmul per precision, the memory bandwidth) and the sampler's decode step at its batch as a
share of it, printed after the table and kept in bench.json.

Closed loop: `c` clients, each sending its next request when the last one returns.
Open loop: Poisson arrivals at --rate (optionally bursty). Benchmarks measure; tests
never assert a timing.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import json
import random
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tessera.bench.cpu import cpu_line, cpu_split, descendants, thread_cpu
from tessera.bench.report import (bar_ratios, percentile, plot, ratio_table, scrape, server_split, summarize,
                                          table)
from tessera.server.engine.platforms import DTYPES


class LoadProgress:
    """rich's progress bars on stderr, one per load (its label), fed as requests answer;
    `close` ends the sweep's display. Quiet when stderr is no terminal."""

    def __init__(self):
        self._console = Console(stderr=True)
        self._progress: Progress | None = None
        self._tasks: dict[str, int] = {}

    def update(self, label: str, completed: int, total: int) -> None:
        if self._progress is None:
            self._progress = Progress(TextColumn("{task.description:>16}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self._console,
                                      disable=not self._console.is_terminal)
            self._progress.start()
        if label not in self._tasks:
            self._tasks[label] = self._progress.add_task(label, total=total)
        self._progress.update(self._tasks[label], completed=completed, total=total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress, self._tasks = None, {}


def shapes_prompts(n: int, seed: int = 0) -> list[str]:
    """Full English/Chinese prompts drawn from the shapes world's vocabulary."""
    from tessera.ops.shapes.world import caption, random_scene  # the world's words; no model involved
    rng = random.Random(seed)
    return [caption(random_scene(rng), rng.choice(("en", "zh"))) for _ in range(n)]


async def _one(client, prompt: str, params: dict, seed: int) -> dict:
    from tessera.clients.client import Generation, TesseraError
    start = time.monotonic()
    first = None
    try:
        async for event in client.generate_stream(prompt, seed=seed, **params):
            if first is None:
                first = time.monotonic() - start
            if isinstance(event, Generation):
                return {"code": "OK", "latency_s": time.monotonic() - start, "first_event_s": first,
                        "images": len(event.images), "candidates": params.get("num_candidates") or 1}
    except TesseraError as exc:
        return {"code": exc.code.name, "latency_s": time.monotonic() - start, "first_event_s": first,
                "images": 0, "candidates": 0, "details": exc.details}
    return {"code": "NO_RESULT", "latency_s": time.monotonic() - start, "first_event_s": first,
            "images": 0, "candidates": 0}


async def _one_http(client, url: str, prompt: str, params: dict, seed: int) -> dict:
    """One request to the generic server (bench/generic.py): JSON in, JSON with base64 PNGs out."""
    import base64

    import httpx
    start = time.monotonic()
    try:
        resp = await client.post(url, json={"prompt": prompt, "seed": seed, **params})
        if resp.status_code != 200:
            return {"code": f"HTTP_{resp.status_code}", "latency_s": time.monotonic() - start,
                    "first_event_s": None, "images": 0, "candidates": 0, "details": resp.text[:500]}
        pngs = [base64.b64decode(im["png"]) for im in resp.json()["images"]]  # as the gRPC client gets bytes
    except httpx.HTTPError as exc:
        return {"code": type(exc).__name__, "latency_s": time.monotonic() - start, "first_event_s": None,
                "images": 0, "candidates": 0, "details": str(exc)}
    return {"code": "OK", "latency_s": time.monotonic() - start, "first_event_s": None,
            "images": len(pngs), "candidates": params.get("num_candidates") or 1}


@contextlib.asynccontextmanager
async def _sender(target: str, connections: int | None = None):
    """`send(prompt, params, seed) -> sample`: Tessera's gRPC stream to a host:port target, or
    JSON over HTTP to an http:// URL (the generic server), with up to `connections` at once."""
    if target.startswith(("http://", "https://")):
        import httpx
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            yield functools.partial(_one_http, client, target)
        return
    from tessera.clients.client import AsyncTesseraClient
    async with AsyncTesseraClient(target, timeout=600, retries=0) as client:
        yield functools.partial(_one, client)


async def closed_loop(target: str, prompts: list[str], concurrency: int, requests: int, params: dict,
                      bar: LoadProgress | None = None, label: str = "") -> tuple[list[dict], float]:
    """`concurrency` clients, each sending its next request when its last one returns;
    `target` is a gRPC host:port or the generic server's http:// URL."""
    samples: list[dict] = []
    counter = iter(range(requests))
    async with _sender(target, concurrency) as send:
        async def worker():
            for i in counter:
                samples.append(await send(prompts[i % len(prompts)], params, 1 + i))
                if bar:
                    bar.update(label, len(samples), requests)
        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.monotonic() - start


async def open_loop(target: str, prompts: list[str], rate: float, requests: int, params: dict,
                    bursty: bool, seed: int = 0, bar: LoadProgress | None = None,
                    label: str = "", duration: float = 0) -> tuple[list[dict], float]:
    """Poisson arrivals; `bursty` sends them in clumps of 1-8 with the same mean rate.

    Sends `requests` requests, or with `duration` > 0 as many as arrive in that many
    seconds; either way every request sent is waited for and counted."""
    rng = random.Random(seed)
    samples: list[dict] = []
    limit = float("inf") if duration > 0 else requests
    expected = round(rate * duration) if duration > 0 else requests
    async with _sender(target) as send:
        tasks, start, sent = [], time.monotonic(), 0

        async def tracked(i):
            samples.append(await send(prompts[i % len(prompts)], params, 1 + i))
            if bar:
                bar.update(label, len(samples), max(expected, sent))
        while sent < limit:
            clump = rng.randint(1, 8) if bursty else 1
            await asyncio.sleep(rng.expovariate(rate / clump))
            if duration > 0 and time.monotonic() - start >= duration:
                break
            for _ in range(int(min(clump, limit - sent))):
                tasks.append(asyncio.create_task(tracked(sent)))
                sent += 1
        await asyncio.gather(*tasks)
        return samples, time.monotonic() - start


@functools.cache
def _pipeline(model_dir: str | None, capacity: int, device: str = "cpu", settings: tuple = ()):
    """The offline pipeline, loaded once however many rounds run."""
    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph
    return LocalPipeline(served_graph(model_dir=model_dir), device, capacity=capacity, **dict(settings))


def offline_run(prompts: list[str], concurrency_levels: list[int], requests: int, params: dict,
                model_dir: str | None, capacity: int, device: str = "cpu", settings: dict | None = None,
                ready=None) -> list[dict]:
    """The same OPs called in process at the sampler's full batch (`settings`: LocalPipeline's).
    `ready()`, if given, is called after the warm-up, just before the timed calls (a start
    line for runs side by side); each summary's `window` is the timed calls' monotonic span."""
    from tessera.ops.messages import GenerateParams
    pipe = _pipeline(model_dir, capacity, device, tuple(sorted((settings or {}).items())))
    reqs = [GenerateParams(prompts[i % len(prompts)], seed=1 + i, **{k: v for k, v in params.items() if v})
            for i in range(requests)]
    per_call = max(1, capacity // max(1, params.get("num_candidates") or 1))
    # Warm-up at the timed calls' own shapes: a first full-batch call pays one-time costs
    # (allocations, oneDNN primitives for new shapes) that a 2-request warm-up left in the
    # timed run (the first of six back-to-back 64-request runs read 7% slower than the rest).
    pipe.generate(reqs[:per_call])
    if ready is not None:
        ready()
    start = time.monotonic()
    done = 0
    for at in range(0, len(reqs), per_call):
        done += sum(len(r.images) for r in pipe.generate(reqs[at:at + per_call]))
    wall = time.monotonic() - start
    single = []
    for i in range(16):  # as many as the closed loop's c=1 level sends
        t = time.monotonic()
        pipe.generate([reqs[i % len(reqs)]])
        single.append(time.monotonic() - t)
    rows = []
    for c in concurrency_levels:  # offline has no concurrency; one figure per plot point
        summary = summarize([], 1.0)  # no RPC samples offline; the figures are filled in below
        summary.update(images_per_s=done / wall, requests_per_s=len(reqs) / wall, window=[start, start + wall],
                       latency_ms={"p50": 1000 * statistics.median(single), "p90": 1000 * percentile(single, .9),
                                   "p99": 1000 * percentile(single, .99), "max": 1000 * max(single)},
                       note="throughput at the sampler's full batch; latency of one request alone")
        rows.append({"config": "offline", "mode": f"closed c={c}", "concurrency": c, "summary": summary})
    return rows


def engine_only(concurrency_levels: list[int], requests: int) -> list[dict]:
    """Four no-op OPs through the real engine, in process: the engine's own overhead."""
    from tessera.server.engine import Engine, GraphConfig, run

    ops, prev = {}, "request"
    for i in range(4):
        ops[f"noop{i}"] = {"type": "tessera.bench.noop:NoopOp", "inputs": [prev], "batch_size": 64,
                           "channel_capacity": 4096}
        prev = f"noop{i}"
    cfg = GraphConfig.from_dict({"ops": ops, "output": prev, "max_inflight": 8192})

    async def main():
        engine = Engine(cfg)
        await engine.start()
        rows = []
        try:
            for c in concurrency_levels:
                lat: list[float] = []
                counter = iter(range(requests))

                async def worker():
                    for i in counter:
                        t = time.monotonic()
                        await engine.submit(i).result()
                        lat.append(time.monotonic() - t)
                for _ in range(2):  # the first pass warms up
                    lat.clear()
                    counter = iter(range(requests))
                    start = time.monotonic()
                    await asyncio.gather(*(worker() for _ in range(c)))
                    wall = time.monotonic() - start
                samples = [{"code": "OK", "latency_s": x, "first_event_s": None, "images": 1, "candidates": 1}
                           for x in lat]
                rows.append({"config": "engine", "mode": f"closed c={c}", "concurrency": c,
                             "summary": summarize(samples, wall)})
        finally:
            await engine.stop(1)
        return rows
    return run(main())


def _sampler_image(pipe, rows: int) -> tuple[list[float], list[float]]:
    """One image's decode steps at `rows` rows through the pipeline's sampler OP, twice (the first
    pass warms up): the second pass's step times and its model calls' (the OP's decoder), seconds."""
    import torch

    from tessera.ops.messages import GenerateParams
    from tessera.server.engine import StepRow
    sample = pipe.sample
    [tok] = pipe.tokenized([GenerateParams("a red circle", num_candidates=rows)])
    decoder, calls = sample.decoder, []
    sync = torch.cuda.synchronize if str(sample.device).startswith("cuda") else (lambda: None)

    def timed(*args):
        t = time.perf_counter()
        out = decoder(*args)
        sync()
        calls.append(time.perf_counter() - t)
        return out
    sample.decoder = timed
    try:
        with torch.inference_mode():
            for _ in range(2):  # the first pass warms up
                sample.admit([StepRow(i, r) for i, r in enumerate(sample.split(tok))])
                times = []
                calls.clear()
                while sample.active:
                    t = time.perf_counter()
                    sample.step()
                    times.append(time.perf_counter() - t)
    finally:
        sample.decoder = decoder
    return times, list(calls)


def kv_profile(model_dir: str | None, rows: int) -> dict:
    """Decode-step time over the first vs the last quarter of image tokens, at a full batch."""
    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph
    times, _ = _sampler_image(LocalPipeline(served_graph(model_dir=model_dir), capacity=rows), rows)
    n = len(times)
    q = max(1, n // 4)
    first, last = statistics.mean(times[:q]), statistics.mean(times[-q - 1:-1])
    return {"rows": rows, "steps": n, "first_quarter_ms": 1000 * first, "last_quarter_ms": 1000 * last,
            "ratio": last / first}


def roofline_profile(model_dir: str | None, rows: int, device: str = "cpu", settings: dict | None = None,
                     seconds: float = 0.5) -> dict:
    """This machine's peak (bench/roofline.py: the CPU's, and the GPU's when `device` is one) and the
    sampler's decode step at `rows` rows over one image against it: the model's FLOPs and weight
    bytes counted from its own calls (at the first and the last step), its time the sampler's
    decoder calls' mean (the draw and the bookkeeping around them are in `sampler_step_ms`)."""
    import torch

    from tessera.bench.roofline import (StepCost, count_step, live_prefix, measure_peak, peak_line, roofline_line,
                                        share)
    peaks = {"cpu": measure_peak("cpu", seconds)}
    if device.startswith("cuda"):
        peaks[device] = measure_peak(device, seconds)
    pipe = _pipeline(model_dir, rows, device, tuple(sorted((settings or {}).items())))
    steps, calls = _sampler_image(pipe, rows)
    sample = pipe.sample
    model, dev = sample.model, sample.device
    tokens = torch.zeros(rows, dtype=torch.long, device=dev)
    # After the image: the cache is the finished rows', which nothing reads again.
    cost = StepCost.mean([count_step(lambda at=at: model.decode_step(tokens, torch.full((rows,), at, device=dev),
                                                                     sample.cache, **live_prefix(model, at)), rows)
                          for at in (0, model.image_len - 2)])
    decode = share(cost, statistics.mean(calls), peaks[device if device in peaks else "cpu"])
    decode.update(model=model_dir or "the bundled model", dtype=str(next(model.parameters()).dtype)[6:],
                  steps=len(calls), sampler_step_ms=1e3 * statistics.mean(steps))
    lines = [peak_line(p) for p in peaks.values()]
    lines.append(roofline_line(f"decode step of {decode['model']}", decode)
                 + f" (the sampler's whole step, with the draw: {decode['sampler_step_ms']:.2f} ms)")
    return {"peaks": {k: p.to_dict() for k, p in peaks.items()}, "decode": decode, "lines": lines}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """`tessera bench`'s arguments (the command line is tessera.server.cli)."""
    ap.add_argument("--server", help="benchmark a running server (else --compare starts its own)")
    ap.add_argument("--metrics", help="that server's metrics URL, for the server-side split")
    ap.add_argument("--compare", default="serial,static,default,offline",
                    help="configurations to start and compare side by side")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--device", default=None, help="device of the model OPs, e.g. cuda:0 (default: the config's)")
    ap.add_argument("--dtype", default=None, choices=DTYPES,
                    help="the model OPs' precision (default: each OP's own, auto: the device's choice)")
    ap.add_argument("--decode-mode", default=None, help="the sampler's decode_mode (default: its own, auto)")
    ap.add_argument("--sample-on", default=None, choices=["device", "cpu"],
                    help="where the sampler picks tokens (default: its own, auto)")
    ap.add_argument("--forward-mode", default=None, choices=["off", "padded", "cuda_graph"],
                    help="decode, clip_text and rerank's forward_mode (default: their own, auto)")
    ap.add_argument("--threadings", default="omp1,omp-all,omp1-split",
                    help="the `ceiling` config's threading settings (bench/ceiling.py THREADINGS), best kept")
    ap.add_argument("--contend", type=int, default=0,
                    help="keep this many cores busy with unrelated spinning processes for the whole run")
    ap.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    ap.add_argument("--requests", type=int, default=0, help="per level (default: max(32, 8 x concurrency): eight requests a client, so that a level outlasts its ramp)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rate", type=float, default=0, help="open loop: requests/s (Poisson)")
    ap.add_argument("--rate-of", help="open loop at --rate-fraction of this config's measured capacity")
    ap.add_argument("--rate-fraction", type=float, default=0.7)
    ap.add_argument("--open-requests", type=int, default=60, help="open loop: requests to send")
    ap.add_argument("--open-duration", type=float, default=0,
                    help="open loop: send for this many seconds instead of --open-requests")
    ap.add_argument("--bursty", action="store_true")
    ap.add_argument("--num-candidates", type=int, default=4)
    ap.add_argument("--num-images", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=0)
    ap.add_argument("--guidance-scale", type=float, default=0)
    ap.add_argument("--prompts", help="a file with one prompt per line (default: the shapes world)")
    ap.add_argument("--engine-only", action="store_true", help="four no-op OPs, no model, no RPC")
    ap.add_argument("--kv", action="store_true", help="decode-step time early vs late (KV cache)")
    ap.add_argument("--roofline", action=argparse.BooleanOptionalAction, default=True,
                    help="measure this machine's peak and the sampler's decode step against it (bench/roofline.py)")
    ap.add_argument("--probe-seconds", type=float, default=0.5,
                    help="the roofline's budget for each probe (a matmul per precision, the bandwidth)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the whole comparison, configs interleaved, and report each round's ratios")
    ap.add_argument("--out", default="runs/bench", help="directory for bench.json and bench.png")
    ap.add_argument("--replot", metavar="BENCH_JSON",
                    help="only redraw bench.png into --out from a saved bench.json (measures nothing)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tessera bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    args.command_line = argv
    return run(args)


def run(args: argparse.Namespace) -> int:
    """The run, with --contend's background load (if any) kept up from start to end."""
    from tessera.bench.ceiling import CpuHog
    with CpuHog(args.contend):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    argv = getattr(args, "command_line", None)
    console = Console()
    if not console.is_terminal:  # a file or a pipe: the whole table, not one cut to 80 columns
        console = Console(width=1000)
    levels = [int(x) for x in args.concurrency.split(",") if x]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        plot(_series(json.loads(Path(args.replot).read_text())["rows"]), str(out / "bench.png"))
        print(f"wrote {out / 'bench.png'} from {args.replot}")
        return 0
    report: dict = {"command": "tessera bench " + " ".join(sys.argv[2:] if argv is None else argv),
                    "date": time.strftime("%Y-%m-%d %H:%M"), "rows": [], "contend": args.contend}
    if args.engine_only:
        rows = engine_only(levels, args.requests or 5000)
        report["rows"] = rows
        console.print(table(rows))
        return _write(report, out, rows)
    if args.kv:
        report["kv"] = kv_profile(args.model_dir, 64)
        print(json.dumps(report["kv"], indent=2))
        (out / "kv.json").write_text(json.dumps(report, indent=2))
        return 0

    prompts = (Path(args.prompts).read_text().splitlines() if args.prompts else shapes_prompts(500))
    prompts = [p for p in prompts if p.strip()]
    params = {"num_candidates": args.num_candidates, "num_images": args.num_images,
              "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
              "guidance_scale": args.guidance_scale}
    bar = LoadProgress()
    rows: list[dict] = []
    tag: dict = {}  # {"round": i} when several rounds run

    def warm_up(target: str) -> None:
        asyncio.run(closed_loop(target, prompts, min(4, args.warmup), args.warmup, params))

    def measure(load, metrics: str | None, pid: int | None, **row) -> None:
        """Run one load (a coroutine giving samples and wall time) and keep its row, with the
        server's per-OP split (its metrics) and per-thread CPU (its process tree, `pid`'s)."""
        before = scrape(metrics) if metrics else {}
        cpu_before = thread_cpu(descendants(pid)) if pid else {}
        started = time.time()
        samples, wall = asyncio.run(load)
        split = server_split(before, scrape(metrics)) if metrics else {}
        cpu = cpu_split(cpu_before, thread_cpu(descendants(pid)), wall) if pid else {}
        rows.append({**row, "summary": summarize(samples, wall), "server": split, "server_cpu": cpu, **tag,
                     "started": started, "ended": time.time()})  # wall clock, to line up with other logs

    def sweep(name: str, target: str, metrics: str | None, pid: int | None = None) -> None:
        warm_up(target)
        for c in levels:
            n = args.requests or max(32, 8 * c)
            measure(closed_loop(target, prompts, c, n, params, bar, f"{name} c={c}"), metrics, pid,
                    config=name, mode=f"closed c={c}", concurrency=c)
        bar.close()

    def open_sweep(name: str, target: str, rate: float, metrics: str | None, pid: int | None = None) -> None:
        warm_up(target)
        measure(open_loop(target, prompts, rate, args.open_requests, params, args.bursty,
                          bar=bar, label=f"{name} open", duration=args.open_duration), metrics, pid,
                config=name, mode=f"open {rate:.2f}/s", rate=rate)
        bar.close()

    def capacity(name: str, since: int) -> float:
        """`name`'s best requests/s among the rows from `since` (this round's)."""
        return max(r["summary"]["requests_per_s"] for r in rows[since:] if r["config"] == name)

    if args.server:
        sweep("server", args.server, args.metrics)
        if args.rate:
            open_sweep("server", args.server, args.rate, args.metrics)
    else:
        from tessera.bench.ceiling import ceiling_run
        from tessera.bench.servers import GenericServer, ServerProcess, bench_configs
        op_settings = {"dtype": args.dtype} if args.dtype else {}
        sample_settings = {k: v for k, v in (("decode_mode", args.decode_mode), ("sample_on", args.sample_on)) if v}
        forward_settings = {"forward_mode": args.forward_mode} if args.forward_mode else {}
        configs = bench_configs(args.model_dir, args.device, op_settings, sample_settings, forward_settings)
        in_process = {**op_settings, **sample_settings, **forward_settings}  # offline, ceiling, generic
        capacity_rows = configs["default"]["graph"]["ops"]["sample"]["batch_size"]
        names = [n for n in args.compare.split(",") if n]
        known = [*configs, "generic", "offline", "ceiling"]
        if unknown := [n for n in names if n not in known]:
            print(f"tessera bench: no configuration {', '.join(unknown)}; --compare takes {', '.join(known)}",
                  file=sys.stderr)
            return 2
        if "generic" in names and not _generic_installed():
            print("tessera bench: the generic config needs LitServe and httpx, the bench distribution's "
                  "dependencies: pip install -e ./bench", file=sys.stderr)
            return 2

        def serving(name: str):
            """The named configuration's server, started (a context manager with target and metrics_url)."""
            if name == "generic":  # the same OPs and settings as offline's, in LitServe
                return GenericServer(args.model_dir, args.device, capacity_rows, in_process)
            return ServerProcess(name, configs[name])

        for i in range(max(1, args.rounds)):
            if args.rounds > 1:
                tag = {"round": i}
            first = len(rows)
            for name in names:
                if name in ("offline", "ceiling"):
                    started = time.time()
                    if name == "offline":
                        new = offline_run(prompts, levels, args.requests or 64, params, args.model_dir, capacity_rows,
                                          args.device or "cpu", in_process)
                    else:
                        new = ceiling_run(prompts, levels, args.requests or 64, params, args.model_dir, capacity_rows,
                                          args.device or "cpu", in_process,
                                          [t for t in args.threadings.split(",") if t])
                    rows += [r | tag | {"started": started, "ended": time.time()} for r in new]
                    continue
                with serving(name) as server:
                    sweep(name, server.target, server.metrics_url, server.pid)
            if args.rate or args.rate_of:
                rate = args.rate
                if args.rate_of:
                    rate = args.rate_fraction * capacity(args.rate_of, first)
                    report.setdefault("open_loop_rate", []).append(
                        {"of": args.rate_of, "fraction": args.rate_fraction, "rate": rate, **tag})
                for name in [n for n in names if n not in ("offline", "ceiling")]:
                    best = capacity(name, first) if levels else float("inf")  # no closed loop: unknown
                    if best < rate:  # its queue would only grow: no steady state to measure
                        print(f"{name}: no open loop at {rate:.2f} req/s, above its measured capacity of "
                              f"{best:.2f} req/s", file=sys.stderr)
                        continue
                    with serving(name) as server:
                        open_sweep(name, server.target, rate, server.metrics_url, server.pid)
            report.setdefault("ratios", []).append(bar_ratios(rows[first:]))
        if args.roofline:  # after the rounds: no server of theirs is running
            report["roofline"] = roofline_profile(args.model_dir, capacity_rows, args.device or "cpu", in_process,
                                                  args.probe_seconds)
    report["rows"] = rows
    console.print(table(rows))
    for r in rows:
        if r.get("server"):
            split = ", ".join(f"{op}: {s['mean_rows_per_batch']:.1f} rows, q {s['mean_queue_ms']:.1f} ms, "
                              f"wait {s['mean_device_wait_ms']:.1f} ms, c {s['mean_compute_ms']:.1f} ms" for op, s in r["server"].items())
            print(f"  {r['config']} {r['mode']}: {split}")
        if r.get("server_cpu"):
            print(f"  {r['config']} {r['mode']} cpu: {cpu_line(r['server_cpu'])}")
    if "roofline" in report:
        print("roofline (the sampler's batch; images/s above):")
        for line in report["roofline"]["lines"]:
            print(f"  {line}")
    if any(report.get("ratios", [])):
        print("side-by-side ratios, one column per round (bench.report.bar_ratios says which is which):")
        print(ratio_table(report["ratios"]))
    return _write(report, out, rows)


def _generic_installed() -> bool:
    """Whether LitServe (the generic server) and httpx (its client) are installed: they are the
    bench's dependencies, missing only where the bench runs from a checkout without its install."""
    return all(importlib.util.find_spec(name) is not None for name in ("litserve", "httpx"))


def _write(report: dict, out: Path, rows: list[dict]) -> int:
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    plot(_series(rows), str(out / "bench.png"))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0


def _series(rows: list[dict]) -> dict[str, list]:
    """The plot's points: per config and concurrency, each round's throughput and p99."""
    points: dict[tuple[str, int], tuple[list, list]] = {}  # each round's throughput and p99 per point
    for r in rows:
        if "concurrency" in r:
            s = r["summary"]
            thru, p99 = points.setdefault((r["config"], r["concurrency"]), ([], []))
            thru.append(s["images_per_s"] if r["config"] != "engine" else s["requests_per_s"])
            p99.append(s["latency_ms"]["p99"])
    series: dict[str, list] = {}
    for (config, c), (thru, p99) in points.items():
        series.setdefault(config, []).append((c, thru, p99))
    return series
