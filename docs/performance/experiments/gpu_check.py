"""The GPU checklist (docs/performance.md, On a GPU) in one run, on a machine with CUDA.

    python docs/performance/experiments/gpu_check.py --out OUT              # on the GPU machine
    python docs/performance/experiments/gpu_check.py --make-reference       # on a CPU: the images to compare with

Installed there with both distributions (`pip install ./clients .`, or `--target DIR` and
PYTHONPATH=DIR where the tree is copied in; `--reference` then points at the tree's
docs/performance/gpu/cpu_reference.json). A machine without a package index needs the
dependencies its Python lacks as wheels beside them; on the device machines of
2026-11-26 that was grpcio (for the generated stubs' version), grpcio-health-checking,
grpcio-reflection, protobuf, starlette and uvicorn:

    pip install --no-index --no-deps --no-build-isolation --target DIR WHEELS/*.whl ./clients .

1. serve: `tessera serve` with the model OPs on cuda:0; each reference prompt's images
   against the CPU's (docs/performance/gpu/cpu_reference.json, made on the CPU).
2. half: fp16 and bf16 sampler tokens against fp32 on a fixed prompt set; images/s of each.
3. decode step: eager against CUDA graphs over the sampler's buckets, at 4, 16, 64 rows;
   tokens of the captured path against eager.
4. the bench (`tessera bench`) on the GPU, with nvidia-smi's utilisation sampled throughout:
   closed loop and the open loop at 70% of static's capacity; the open loop at 50% (two
   rounds); and static and default again with decode, clip_text and rerank eager
   (`forward_mode: off`), at the same open-loop rate.

Also (`sample_on`): tokens picked on the GPU against the CPU's picks from the same logits,
a 64-row step's time and offline images/s of each; and (`forward`): decode, clip_text and
rerank's model calls eager against CUDA graphs, per call and offline.

Every section writes its figures into OUT/gpu_check.json as soon as it has them, and a
failing section is recorded and the next one runs. An experiment kept beside its figures
(docs/performance/gpu/), not installed; nothing here runs in the test suite.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1] / "gpu" / "cpu_reference.json"  # docs/performance/gpu/
# Fixed: prompts of the shapes world (both languages), one seed each, num_candidates 4.
PROMPTS = [("a small red circle in the top left on a blue background", 7),
           ("a large green square in the center on a white background", 11),
           ("蓝色背景上左上角有一个小的红色圆形", 3),
           ("a yellow triangle in the bottom right on a black background", 5),
           ("a small blue square in the top right on a yellow background", 13),
           ("白色背景中间有一个大的绿色三角形", 17),
           ("a purple circle in the bottom left on a gray background", 19),
           ("a large orange triangle in the center on a blue background", 23)]
PARAMS = {"num_images": 1, "num_candidates": 4}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_reference(path: Path) -> None:
    """On the CPU: each prompt's image, one request at a time, as the server returns it."""
    from tessera.ops.messages import GenerateParams
    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph
    pipe = LocalPipeline(served_graph(), "cpu", capacity=64)
    out = []
    path.parent.mkdir(parents=True, exist_ok=True)
    for i, (prompt, seed) in enumerate(PROMPTS):
        image = pipe.generate([GenerateParams(prompt, seed=seed, **PARAMS)])[0].images[0]
        (path.parent / f"cpu_{i}.png").write_bytes(image.png)
        out.append({"prompt": prompt, "seed": seed, "sha256": _sha(image.png), "png": f"cpu_{i}.png",
                    "candidate_index": image.candidate_index, "clip_score": image.clip_score})
    path.write_text(json.dumps({"params": PARAMS, "images": out}, ensure_ascii=False, indent=2))
    print(f"wrote {path}")


class Report:
    def __init__(self, out: Path):
        self.path, self.data = out / "gpu_check.json", {}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, ensure_ascii=False, indent=2, default=str))
        print(f"== {key}: {json.dumps(value, ensure_ascii=False, default=str)[:1500]}", flush=True)


def section(report: Report, key: str, fn, *args) -> None:
    started = time.time()
    try:
        value = fn(*args)
    except Exception:  # a failed section is a finding; the next one still runs
        value = {"error": traceback.format_exc()[-3000:]}
    report.put(key, {**value, "started": started, "ended": time.time()})


def _pixels(png: bytes):
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


MODE: dict = {}  # the sampler's settings for every section: {} (its defaults), or what a failed probe falls back to


def probe_capture(device: str) -> dict:
    """Capture the bundled model's decode step once; if it fails, the other sections run eagerly."""
    import torch

    from tessera.ops.decoding import BucketedDecoder
    from tessera.ops.families.tessera.loading import load_model_dir
    from tessera.ops.families.tessera.transformer import KVCache
    model = load_model_dir(None, device=device, dtype=torch.float32).transformer
    try:
        BucketedDecoder(model, KVCache(model.cfg, 8, device), [4, 8], "cuda_graph")
    except Exception:
        MODE["decode_mode"] = "off"
        return {"captured": False, "error": traceback.format_exc()[-3000:], "sections_use": "decode_mode off"}
    from tessera.ops.messages import GenerateParams
    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph
    try:  # tokens picked on the GPU (the sampler's default there)
        LocalPipeline(served_graph(), device, capacity=8, **MODE).generate([GenerateParams("a red circle", seed=1)])
    except Exception:
        MODE["sample_on"] = "cpu"
        return {"captured": True, "sample_on_device": False, "error": traceback.format_exc()[-3000:],
                "sections_use": f"{MODE}"}
    return {"captured": True, "sample_on_device": True, "sections_use": "the sampler's defaults (auto)"}


def check_serve(device: str, reference: Path) -> dict:
    """1. The served images for each reference prompt and seed against the CPU's."""
    from tessera.bench.servers import ServerProcess, bench_configs
    from tessera.clients.client import AsyncTesseraClient
    ref = json.loads(reference.read_text())
    config = bench_configs(None, device, sample_settings=MODE)["default"]

    async def fetch(target):
        async with AsyncTesseraClient(target, timeout=300, retries=0) as client:
            return [await client.generate(r["prompt"], seed=r["seed"], **ref["params"]) for r in ref["images"]]
    t = time.monotonic()
    with ServerProcess("gpu", config) as server:
        ready = time.monotonic() - t
        gens = asyncio.run(fetch(server.target))
    rows = []
    for r, gen in zip(ref["images"], gens):
        got = gen.images[0]
        png = got.png
        same = _sha(png) == r["sha256"]
        row = {"prompt": r["prompt"], "seed": r["seed"], "identical": same,
               "candidate": [r["candidate_index"], got.candidate_index]}
        if not same:
            diff = abs(_pixels(png) - _pixels((reference.parent / r["png"]).read_bytes()))
            row |= {"max_pixel_diff": int(diff.max()), "pixels_differing": float((diff.max(-1) > 0).mean())}
        rows.append(row)
    return {"server_ready_s": ready, "identical": sum(r["identical"] for r in rows), "of": len(rows),
            "images": rows}


def _rows(pipe, prompts: list[str], candidates: int) -> list:
    from tessera.ops.messages import GenerateParams
    toks = pipe.tokenized([GenerateParams(p, seed=1 + i, num_candidates=candidates) for i, p in enumerate(prompts)])
    return [r for t in toks for r in pipe.sample.split(t)]


def _tokens(pipe, rows) -> list[list[int]]:
    return [r.tokens.tolist() for r in pipe.sample_rows(rows)]


def _compare(a: list[list[int]], b: list[list[int]]) -> dict:
    rows = sum(x != y for x, y in zip(a, b))
    first = [next(i for i, (p, q) in enumerate(zip(x, y)) if p != q) for x, y in zip(a, b) if x != y]
    toks = sum(p != q for x, y in zip(a, b) for p, q in zip(x, y))
    return {"rows_differing": rows, "rows": len(a), "tokens_differing": toks,
            "tokens": sum(len(x) for x in a), "first_differing_index": first[:16]}


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _images_per_s(pipe, prompts: list[str], rounds: int = 3) -> list[float]:
    """Full batches (16 requests x 4 candidates = the sampler's 64 rows), as the offline ceiling."""
    from tessera.ops.messages import GenerateParams
    device = pipe.sample.device
    reqs = [GenerateParams(p, seed=1 + i, **PARAMS) for i, p in enumerate(prompts)]
    pipe.generate(reqs[:16])
    out = []
    for _ in range(rounds):
        _sync(device)
        t = time.perf_counter()
        n = sum(len(r.images) for at in range(0, len(reqs), 16) for r in pipe.generate(reqs[at:at + 16]))
        _sync(device)
        out.append(n / (time.perf_counter() - t))
    return out


def _interleaved(pipes: dict, prompts: list[str], rounds: int = 2) -> dict[str, list[float]]:
    """Offline images/s of each named pipeline, one run each per round, the names interleaved."""
    speed: dict[str, list[float]] = {name: [] for name in pipes}
    for _ in range(rounds):
        for name, pipe in pipes.items():
            speed[name] += _images_per_s(pipe, prompts, rounds=1)
    return speed


def check_half(device: str, prompts: list[str]) -> dict:
    """2. Half-precision tokens against fp32 (64 prompts x 4 candidates), and images/s of each."""
    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph
    pipes = {name: LocalPipeline(served_graph(), device, capacity=64, dtype=dtype, **MODE)
             for name, dtype in (("fp32", "float32"), ("fp16", "float16"), ("bf16", "bfloat16"))}
    rows = _rows(pipes["fp32"], prompts, 4)
    tokens = {name: _tokens(p, rows) for name, p in pipes.items()}
    out = {name: _compare(tokens["fp32"], tokens[name]) for name in ("fp16", "bf16")}
    return {"tokens_vs_fp32": out, "images_per_s": _interleaved(pipes, prompts), "decode_mode": pipes["fp32"].sample.decode_mode}


def check_graphs(device: str, prompts: list[str]) -> dict:
    """3. Decode-step time, eager vs CUDA graphs (and padded eager), at 4/16/64 rows; tokens."""
    import torch

    from tessera.ops.decoding import BucketedDecoder
    from tessera.ops.families.tessera.loading import load_model_dir
    from tessera.ops.families.tessera.transformer import KVCache
    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph
    out: dict = {}
    for dtype in (torch.float32, torch.float16):
        model = load_model_dir(None, device=device, dtype=dtype).transformer
        cache = KVCache(model.cfg, 128, device, dtype)
        buckets = [2 ** i for i in range(8)]
        t = time.perf_counter()
        graphs = BucketedDecoder(model, cache, buckets, "cuda_graph")
        capture_s = time.perf_counter() - t
        times: dict = {}
        with torch.inference_mode():
            for _ in range(5):
                for n in (4, 16, 64):
                    tok = torch.randint(0, model.cfg.image_vocab, (n,), device=device)
                    idx = torch.randint(0, model.cfg.image_len - 1, (n,), device=device)
                    for name, fn in (("eager", lambda: model.decode_step(tok, idx, cache)),
                                     ("cuda_graph", lambda: graphs(tok, idx))):
                        for _ in range(3):
                            fn()
                        torch.cuda.synchronize()
                        t = time.perf_counter()
                        for _ in range(50):
                            fn()
                        torch.cuda.synchronize()
                        times.setdefault(f"{n} rows {name}", []).append(1000 * (time.perf_counter() - t) / 50)
        out[str(dtype).replace("torch.", "")] = {
            "capture_s_8_buckets": capture_s, "step_ms_per_round": times,
            "median_ratio_graph_over_eager": {n: statistics.median(
                g / e for g, e in zip(times[f"{n} rows cuda_graph"], times[f"{n} rows eager"])) for n in (4, 16, 64)}}
    eager = LocalPipeline(served_graph(), device, capacity=64, decode_mode="off")
    graph = LocalPipeline(served_graph(), device, capacity=64, decode_mode="cuda_graph")
    rows = _rows(eager, prompts, 4)
    out["tokens_cuda_graph_vs_eager"] = _compare(_tokens(eager, rows), _tokens(graph, rows))
    out["offline_images_per_s"] = _interleaved({"off": eager, "cuda_graph": graph}, prompts)
    return out


def check_sample_on(device: str, prompts: list[str]) -> dict:
    """Tokens picked on the device against the CPU's picks; a 64-row step and offline images/s of each."""
    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph
    settings = {k: v for k, v in MODE.items() if k != "sample_on"}
    pipes = {on: LocalPipeline(served_graph(), device, capacity=64, sample_on=on, **settings)
             for on in ("cpu", "device")}
    rows = _rows(pipes["cpu"], prompts, 4)
    out: dict = {"tokens_device_vs_cpu": _compare(_tokens(pipes["cpu"], rows), _tokens(pipes["device"], rows))}
    out["step_split"] = {on: check_step_split(device, prompts, sample_on=on) for on in ("cpu", "device")}
    out["offline_images_per_s"] = _interleaved(pipes, prompts)
    return out


def check_forward(device: str, prompts: list[str]) -> dict:
    """decode, clip_text and rerank's model calls: eager against their CUDA graphs (forward_mode)."""
    import torch

    from tessera.ops.messages import GenerateParams
    from tessera.server.engine.platforms.buckets import Bucketed
    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph
    pipes = {mode: LocalPipeline(served_graph(), device, capacity=64, forward_mode=mode, **MODE)
             for mode in ("off", "auto")}
    calls = {mode: {"decode": p.decode._decode, "clip_text": p.clip_text._encode, "rerank": p.rerank._encode}
             for mode, p in pipes.items()}
    out: dict = {"bucketed": {name: isinstance(fn, Bucketed) for name, fn in calls["auto"].items()}}
    dvae = pipes["off"].bundle.dvae.cfg
    times: dict = {}
    diffs: dict = {}
    with torch.inference_mode():
        for n in (1, 4, 16, 64):
            text = [t.text for t in pipes["off"].tokenized([GenerateParams(p) for p in prompts[:n]])]
            args = {"decode": torch.randint(0, dvae.n_codes, (n, dvae.grid ** 2), device=device),
                    "clip_text": torch.tensor(text, device=device),
                    "rerank": torch.randint(0, 256, (n, dvae.image_size, dvae.image_size, 3), dtype=torch.uint8,
                                            device=device)}
            for name, x in args.items():
                eager, graph = calls["off"][name](x), calls["auto"][name](x)
                diffs[f"{name} {n}"] = float((eager.float() - graph.float()).abs().max())
                _time_parts({f"{name} {n} {mode}": (lambda f=calls[mode][name], x=x: f(x)) for mode in calls},
                            times, device)
    out["max_abs_diff_graph_vs_eager"] = diffs
    out["ms_per_call"] = times
    out["offline_images_per_s"] = _interleaved(pipes, prompts)
    return out


def check_step_split(device: str, prompts: list[str], **settings) -> dict:
    """Where a 64-row sampler step goes on the GPU: the decode step against the token sampling."""
    import torch

    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph
    from tessera.server.engine import StepRow
    pipe = LocalPipeline(served_graph(), device, capacity=64, **{**MODE, **settings})
    op = pipe.sample
    op.admit([StepRow(i, r) for i, r in enumerate(_rows(pipe, prompts[:16], 4))])
    n = len(op.slots)
    tokens = torch.zeros(n, dtype=torch.long, device=device)
    index = torch.full((n,), 5, dtype=torch.long, device=device)
    logits = torch.randn(len(op.rows), op.cfg.image_vocab, device=device)
    parts = {"step": op.step, "decode_step": lambda: op.decoder(tokens, index),
             "decode_step_eager": lambda: op.model.decode_step(tokens, index, op.cache),
             "sample_tokens": lambda: op._sample(op.rows, logits, logits, [1] * len(op.rows))}
    times: dict = {}
    with torch.inference_mode():  # as the sampler's own calls run
        _time_parts(parts, times, device)
    return {"rows": len(op.rows), "slots": n, "decode_mode": op.decode_mode, "sample_on": str(op.pick_device),
            "ms_per_call": times}


def _time_parts(parts: dict, times: dict, device: str) -> None:
    for _ in range(3):
        for name, fn in parts.items():
            fn()
            _sync(device)
            t = time.perf_counter()
            for _ in range(10):
                fn()
            _sync(device)
            times.setdefault(name, []).append(1000 * (time.perf_counter() - t) / 10)


def run_bench(out: Path, device: str, name: str, args: list[str], timeout: float) -> dict:
    """4. `tessera bench` in a child process (its servers are its children)."""
    cmd = [sys.executable, "-m", "tessera.server.cli", "bench", "--device", device, "--out", str(out / name), *args]
    for key, value in MODE.items():  # a failed probe's fallback; an explicit --sample-on in args comes later
        cmd[6:6] = [f"--{key.replace('_', '-')}", value]
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:  # at most 8 files come back: a log only when it failed
        (out / f"{name}.log").write_text(proc.stdout[-20000:] + "\n--- stderr\n" + proc.stderr[-20000:])
    result = {"command": " ".join(cmd[2:]), "rc": proc.returncode, "wall_s": time.time() - t}
    bench = out / name / "bench.json"
    if bench.exists():
        result["bench"] = json.loads(bench.read_text())
    return result


def utilisation(samples: list[tuple[float, float]], start: float, end: float) -> dict:
    inside = [u for t, u in samples if start <= t <= end]
    if not inside:
        return {"samples": 0}
    return {"mean": statistics.mean(inside), "p50": statistics.median(inside), "samples": len(inside)}


def read_smi(path: Path) -> list[tuple[float, float]]:
    """nvidia-smi's CSV (timestamp, utilization.gpu) -> (epoch seconds, percent)."""
    from datetime import datetime
    out = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            stamp = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out.append((stamp, float(parts[1].split()[0])))
        except (ValueError, IndexError):
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python docs/performance/experiments/gpu_check.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/gpu")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--make-reference", action="store_true", help="on a CPU: write the reference images")
    ap.add_argument("--reference", type=Path, default=REFERENCE, help="the CPU's images (cpu_reference.json)")
    ap.add_argument("--skip", default="", help="sections to skip: serve,half,sample_on,forward,split,graphs,bench,serial")
    ap.add_argument("--bench-timeout", type=float, default=200)
    ap.add_argument("--prompts", type=int, default=64, help="the fixed prompt set's size (half, graphs)")
    args = ap.parse_args(argv)
    if args.make_reference:
        make_reference(args.reference)
        return 0
    import torch

    from tessera.bench.run import shapes_prompts
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    smi_path = out / "nvidia-smi.csv"
    try:
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader",
                                "-lms", "100"], stdout=smi_path.open("w"), stderr=subprocess.DEVNULL)
    except FileNotFoundError:  # a dry run on a CPU
        smi = subprocess.Popen(["true"])
    report = Report(out)
    cuda = args.device.startswith("cuda")
    props = torch.cuda.get_device_properties(args.device) if cuda else None
    report.put("machine", {"gpu": props.name if cuda else None,
                           "memory_gib": props.total_memory / 2 ** 30 if cuda else None, "torch": torch.__version__,
                           "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "python": sys.version.split()[0], "cpu_threads": torch.get_num_threads()})
    prompts = shapes_prompts(args.prompts, seed=1)
    try:
        if cuda:
            section(report, "0_capture_probe", probe_capture, args.device)
        if "serve" not in skip:
            section(report, "1_serve", check_serve, args.device, args.reference)
        if "half" not in skip:
            section(report, "2_half", check_half, args.device, prompts)
        if "sample_on" not in skip:
            section(report, "2_sample_on", check_sample_on, args.device, prompts)
        if "forward" not in skip:
            section(report, "2_forward", check_forward, args.device, prompts)
        if "split" not in skip:
            section(report, "3_step_split", check_step_split, args.device, prompts)
        if "graphs" not in skip:
            section(report, "3_graphs", check_graphs, args.device, prompts)
        if "bench" not in skip:
            section(report, "4_bench", run_bench, out, args.device, "bench",
                    ["--compare", "static,default,offline", "--concurrency", "1,8,32,64", "--num-candidates", "4",
                     "--rate-of", "static", "--rate-fraction", "0.7", "--open-duration", "15"], args.bench_timeout)
            section(report, "4_bench_open_half", run_bench, out, args.device, "open-half",
                    ["--compare", "static,default", "--concurrency", "32", "--num-candidates", "4", "--rounds", "2",
                     "--rate-of", "static", "--rate-fraction", "0.5", "--open-duration", "15"], args.bench_timeout)
            rate = report.data["4_bench"].get("bench", {}).get("open_loop_rate") or [{}]
            section(report, "4_bench_forward_off", run_bench, out, args.device, "forward-off",
                    ["--compare", "static,default", "--concurrency", "1,8,32,64", "--num-candidates", "4",
                     "--forward-mode", "off", "--rate", f"{rate[0].get('rate', 30):.2f}", "--open-duration", "15"],
                    args.bench_timeout)
            if "serial" not in skip:
                section(report, "4_bench_serial", run_bench, out, args.device, "bench-serial",
                        ["--compare", "serial", "--concurrency", "1,8", "--requests", "16", "--num-candidates", "4"],
                        args.bench_timeout / 2)
            for name in ("open-half", "forward-off", "bench-serial"):  # at most 8 files come back
                (out / name / "bench.png").unlink(missing_ok=True)
    finally:
        smi.terminate()
        smi.wait()
    samples = read_smi(smi_path)
    util = {}
    for key, value in report.data.items():
        if isinstance(value, dict) and "started" in value:
            util[key] = utilisation(samples, value["started"], value["ended"])
        for row in (value.get("bench", {}).get("rows", []) if isinstance(value, dict) else []):
            if "started" in row:
                util[f"{key} {row['config']} {row['mode']}"] = utilisation(samples, row["started"], row["ended"])
    report.put("gpu_utilisation_percent", util)
    return 0


if __name__ == "__main__":
    sys.exit(main())
