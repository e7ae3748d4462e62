"""Model families served by Tessera against their own projects' samplers, at realistic shapes.

    python -m tessera.bench.families dalle-pytorch --rounds 3 --out docs/performance/dalle-pytorch-2026-12-06

One function per family (`dalle_pytorch`; min-dalle to come). Each builds a random-weight
checkpoint with the project's own classes in a temp dir, runs interleaved rounds (round r runs
every contender once, in the same order), profiles one decode step of each side, and writes
rows.json (every raw row) and results.md into --out. Run from the repository root: the
checkpoint is built through the tests' helpers (tests/ops/families/...), as the tests build it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

PROMPTS = ["a red circle on a blue background", "an armchair in the shape of an avocado",
           "a painting of a fox sitting in a field at sunrise", "a green train coming down the tracks",
           "a bowl of soup that looks like a monster", "a snowy mountain above a small lake",
           "a cat wearing sunglasses on a beach", "a bridge over a river at night"]


# -- shared helpers -------------------------------------------------------------------------

def settings() -> dict:
    """What every figure was measured under."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "omp": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))},
            "commit": commit, "python": platform.python_version(), "machine": platform.processor() or platform.machine()}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Serve:
    """`tessera serve --model CKPT --port 0` as a subprocess, logging to a file; its port read off its banner."""

    def __init__(self, model: str, log: Path):
        cmd = [sys.executable, "-m", "tessera.server.cli", "serve", "--model", model, "--port", "0",
               "--http-port", "-1", "--metrics-port", "-1"]
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
        while self.proc.poll() is None:
            m = re.search(r"serving .* on [\d.]+:(\d+)", log.read_text())
            if m:
                self.target = f"127.0.0.1:{m.group(1)}"
                return
            time.sleep(0.5)
        raise RuntimeError(f"tessera serve exited {self.proc.returncode}: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def closed_loop(target: str, c: int, n: int, seed0: int) -> dict:
    """c clients, each sending its next request when its last returns, n requests in all."""
    from tessera.clients import AsyncTesseraClient

    async def run():
        client = AsyncTesseraClient(target, timeout=3600)
        todo = iter(range(n))
        lat = []

        async def one_client():
            for i in todo:
                t = time.perf_counter()
                gen = await client.generate(PROMPTS[i % len(PROMPTS)], num_images=1, num_candidates=1, seed=seed0 + i)
                assert len(gen.images) == 1
                lat.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(c)))
        wall = time.perf_counter() - t0
        await client.close()
        return {"images": n, "wall_s": wall, "images_per_s": n / wall,
                "latency_p50_s": sorted(lat)[len(lat) // 2], "latency_max_s": max(lat)}
    return asyncio.run(run())


class Timers:
    """Inclusive wall time of chosen methods, patched onto their classes (restored by undo)."""

    def __init__(self):
        self.total, self.calls, self._undo = defaultdict(float), defaultdict(int), []

    def wrap(self, cls, name: str, label: str):
        orig = getattr(cls, name)

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                self.total[label] += time.perf_counter() - t
                self.calls[label] += 1
        setattr(cls, name, timed)
        self._undo.append((cls, name, orig))

    def undo(self):
        for cls, name, orig in reversed(self._undo):
            setattr(cls, name, orig)
        self._undo.clear()


def table(head: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


# -- DALLE-pytorch ----------------------------------------------------------------------------

DP_SHAPE = dict(dim=512, depth=8, heads=8, dim_head=64, text_seq_len=128, num_text_tokens=49408)
DP_VAE = dict(image_size=128, num_layers=3, num_tokens=8192, codebook_dim=512, hidden_dim=64)


class _Stop(Exception):
    pass


def _dp_build(workdir: Path):
    """DALLE-pytorch's own DALLE (class defaults: full attention, rotary, shift tokens) with a
    DiscreteVAE, random weights, saved in train_dalle.py's layout."""
    from tests.ops.families.dalle_pytorch.conftest import save_checkpoint
    from tests.ops.families.references import import_dalle_pytorch
    dp = import_dalle_pytorch()
    torch.manual_seed(0)
    dalle = dp.DALLE(vae=dp.DiscreteVAE(**DP_VAE), **DP_SHAPE).eval()
    hparams = dict(DP_SHAPE, reversible=False, loss_img_weight=7, attn_types=("full",), ff_dropout=0.0,
                   attn_dropout=0.0, stable=False, shift_tokens=True, rotary_emb=True, shared_attn_ids=None,
                   shared_ff_ids=None, share_input_output_emb=False)
    return dp, dalle, save_checkpoint(workdir / "dalle-512x8.pt", dalle, hparams, DP_VAE)


def _dp_fix_cache(dp) -> None:
    """1.6.6 drops the cache when cond_scale == 1; pass it through (this process only)."""
    orig = dp.DALLE.forward_with_cond_scale

    def forward_with_cond_scale(self, *args, cond_scale=1, cache=None, **kwargs):
        if cond_scale == 1:
            return self(*args, cache=cache, **kwargs)
        return orig(self, *args, cond_scale=cond_scale, cache=cache, **kwargs)
    dp.DALLE.forward_with_cond_scale = forward_with_cond_scale


def _dp_text(batch: int) -> torch.Tensor:
    from dalle_pytorch.tokenizer import SimpleTokenizer
    return SimpleTokenizer().tokenize([PROMPTS[i % len(PROMPTS)] for i in range(batch)], DP_SHAPE["text_seq_len"])


def _dp_steps(dalle, text, *, last: int | None = None, first: int | None = None, **kw):
    """generate_images with a clock on each step (forward + top-k + gumbel pick); `first` stops it
    after that many steps, `last` primes it with a random image so only the last steps run.
    Returns (step times, VAE decode s, the image tokens or None)."""
    stamps, out = [], {}
    fwd, dec = type(dalle).forward_with_cond_scale, dalle.vae.decode

    def timed_fwd(self, *a, **k):
        stamps.append(time.perf_counter())
        if first is not None and len(stamps) > first:
            out["tokens"] = a[1].clone()  # (text, image so far)
            raise _Stop
        return fwd(self, *a, **k)

    def timed_dec(img_seq):
        stamps.append(time.perf_counter())
        out["tokens"] = img_seq.clone()
        t = time.perf_counter()
        r = dec(img_seq)
        out["decode_s"] = time.perf_counter() - t
        return r
    type(dalle).forward_with_cond_scale, dalle.vae.decode = timed_fwd, timed_dec
    try:
        if last is not None:
            kw.update(img=torch.rand(text.shape[0], 3, DP_VAE["image_size"], DP_VAE["image_size"]),
                      num_init_img_tokens=dalle.image_seq_len - last)
        with torch.no_grad():
            dalle.generate_images(text, **kw)
    except _Stop:
        pass
    finally:
        type(dalle).forward_with_cond_scale = fwd
        del dalle.vae.decode
    return [b - a for a, b in zip(stamps, stamps[1:])], out.get("decode_s"), out.get("tokens")


def _dp_uncached(dalle, text, n: int) -> dict:
    """As shipped: every step recomputes the whole sequence. Time the first n and the last n
    steps, fit step time linearly in the step number (least squares over the 2n steps), and
    sum the fit over all steps, plus the last run's VAE decode."""
    L = dalle.image_seq_len
    head, _, _ = _dp_steps(dalle, text, first=n, filter_thres=0.9)
    tail, decode_s, _ = _dp_steps(dalle, text, last=n, filter_thres=0.9)
    xs = list(range(n)) + list(range(L - n, L))
    ys = head + tail
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    total = sum(my + slope * (j - mx) for j in range(L)) + decode_s
    return {"wall_s": total, "images_per_s": text.shape[0] / total, "extrapolated": True, "n": n,
            "first_steps_s": head, "last_steps_s": tail, "decode_s": decode_s}


def _dp_cached(dalle, text) -> dict:
    t = time.perf_counter()
    steps, decode_s, _ = _dp_steps(dalle, text, filter_thres=0.9, use_cache=True)
    wall = time.perf_counter() - t
    return {"wall_s": wall, "images_per_s": text.shape[0] / wall, "steps": len(steps),
            "step_mean_s": sum(steps[1:]) / max(len(steps) - 1, 1), "prefill_s": steps[0], "decode_s": decode_s}


def _dp_check_fix(dalle, text, steps: int) -> dict:
    """The fixed cache path's greedy tokens (filter_thres 1.0 keeps one) equal the uncached path's
    over the first `steps` image tokens. (Not from a primed image: 1.6.6's PreShiftToken caches
    the already shifted image inputs when the prefix holds image tokens, so priming with the
    cache on is wrong in DALLE-pytorch itself.)"""
    toks = [_dp_steps(dalle, text, first=steps, filter_thres=1.0, use_cache=cache)[2] for cache in (False, True)]
    return {"steps": steps, "rows": text.shape[0], "equal": bool(torch.equal(toks[0], toks[1])),
            "tokens_row0": toks[1][0].tolist()}


def _profile_ours(ckpt: Path, rows: int) -> dict:
    """Our decode step at `rows` rows over one whole image, split by part (mean ms per step)."""
    from tessera.ops.families.base import ModelSpec
    from tessera.ops.families.dalle_pytorch import load
    from tessera.ops.families.dalle_pytorch import model as M
    from tessera.ops.models.sampling import sample_tokens
    bundle = load(ModelSpec(path=str(ckpt)), "cpu", torch.float32)
    model, k = bundle.transformer, bundle.sampling.top_k
    cache = model.new_cache(rows, "cpu", torch.float32)
    text = torch.randint(1, 49408, (rows, model.text_len))  # every text position is attended to anyway
    T = Timers()
    for cls, name, label in ((M.DallePytorchModel, "decode_step", "step"), (M.DallePytorchModel, "_run", "layers"),
                             (M.DallePytorchModel, "_logits", "logits"), (M.Attention, "step", "attention"),
                             (M.FeedForward, "step", "ff"), (M.Sublayer, "step", "sublayers")):
        T.wrap(cls, name, label)
    args = (torch.ones(rows), torch.full((rows,), k), torch.ones(rows))
    pick = 0.0
    with torch.inference_mode():
        logits = model.prefill(text, cache, torch.arange(rows))
        T.total.clear()
        for i in range(model.image_len - 1):
            t = time.perf_counter()
            tok = sample_tokens(logits.float(), *args, torch.rand(rows, dtype=torch.float64))
            pick += time.perf_counter() - t
            logits = model.decode_step(tok, torch.full((rows,), i), cache)
    T.undo()
    n = model.image_len - 1
    ms = {k: 1e3 * v / n for k, v in T.total.items()}
    return {"embedding, rotary table, step setup": ms["step"] - ms["layers"] - ms["logits"],
            "attention (8 layers)": ms["attention"], "feed-forward (8 layers)": ms["ff"],
            "norms + shift-token ring + LayerScale": ms["sublayers"] - ms["attention"] - ms["ff"],
            "residual adds, layer loop": ms["layers"] - ms["sublayers"], "logits (8192 image rows)": ms["logits"],
            "sampler's pick (top_k %d)" % k: 1e3 * pick / n, "total": ms["step"] + 1e3 * pick / n}


def _profile_dalle(dp, dalle, text) -> dict:
    """DALLE-pytorch's cached step (with the fix) over one whole image, split the same way."""
    from dalle_pytorch import attention as A, transformer as TR
    T = Timers()
    for cls, name, label in ((dp.DALLE, "forward_with_cond_scale", "forward"), (TR.Transformer, "forward", "layers"),
                             (A.Attention, "forward", "attention"), (TR.FeedForward, "forward", "ff"),
                             (TR.LayerScale, "forward", "sublayers")):
        T.wrap(cls, name, label)
    T.wrap(type(dalle.to_logits), "forward", "logits")  # nn.Sequential(LayerNorm, Linear), all 57,728 rows
    timed, calls = dp.DALLE.forward_with_cond_scale, []

    def skip_prefill(self, *a, **kw):  # the first forward is the text prefill: not a decode step
        calls.append(1)
        if len(calls) == 2:
            T.total.clear()
        return timed(self, *a, **kw)
    dp.DALLE.forward_with_cond_scale = skip_prefill
    try:
        steps, _, _ = _dp_steps(dalle, text, filter_thres=0.9, use_cache=True)
    finally:
        dp.DALLE.forward_with_cond_scale = timed
        T.undo()
    n = len(steps) - 1  # steps[0] is the text prefill
    ms = {k: v * 1e3 / n for k, v in T.total.items()}
    step = 1e3 * sum(steps[1:]) / n
    return {"embedding, rotary table, step setup": ms["forward"] - ms["layers"] - ms["logits"],
            "attention (8 layers)": ms["attention"], "feed-forward (8 layers)": ms["ff"],
            "norms + shift-token ring + LayerScale": ms["sublayers"] - ms["attention"] - ms["ff"],
            "residual adds, layer loop": ms["layers"] - ms["sublayers"], "logits (all 57,728 rows)": ms["logits"],
            "top_k + gumbel pick + cat": step - ms["forward"], "total": step}


def dalle_pytorch(rounds: int, out: Path, levels=(1, 8, 32), batch: int = 8, tail: int = 3,
                  profile_only: bool = False) -> tuple[list, str]:
    """profile_only: keep out/rows.json's rounds and check, redo the per-step profile."""
    rows, kept = [], None
    with tempfile.TemporaryDirectory() as tmp:
        dp, dalle, ckpt = _dp_build(Path(tmp))
        text = _dp_text(batch)
        _dp_fix_cache(dp)
        if profile_only:
            old = json.loads((out / "rows.json").read_text())
            rows, check, rounds, kept = old["rows"], old["check"], 0, old["settings"]
        else:
            check = _dp_check_fix(dalle, text, steps=3)
            print("cache fix check:", check, flush=True)
        server = Serve(str(ckpt), Path(tmp) / "serve.log") if rounds else None
        try:
            if server:
                closed_loop(server.target, 1, 1, 10 ** 6)  # warm-up
            for r in range(rounds):
                for name in [f"tessera c={c}" for c in levels] + ["dalle-pytorch fixed cache", "dalle-pytorch as shipped"]:
                    la = loadavg()
                    print(f"round {r} {name} load {la}", flush=True)
                    if name.startswith("tessera"):
                        c = int(name.split("=")[1])
                        row = closed_loop(server.target, c, max(8, 2 * c), seed0=1000 * r + 100 * c)
                    elif "fixed" in name:
                        row = _dp_cached(dalle, text)
                    else:
                        row = _dp_uncached(dalle, text, tail)
                    rows.append({"round": r, "contender": name, "loadavg_before": la, **row})
                    print(f"  {row['images_per_s']:.3f} images/s", flush=True)
                    (out / "rows.json").write_text(json.dumps({"settings": settings(), "check": check, "rows": rows},
                                                              indent=1))
        finally:
            if server:
                server.stop()
        prof = {"tessera (8 rows)": _profile_ours(ckpt, batch), "dalle-pytorch fixed cache (batch 8)": _profile_dalle(dp, dalle, text)}
    (out / "rows.json").write_text(json.dumps({"settings": kept or settings(), "check": check, "rows": rows,
                                               "profile_settings": settings(), "profile_ms_per_step": prof}, indent=1))
    return rows, _dp_report(rows, check, prof, rounds, tail)


def _dp_report(rows, check, prof, rounds, tail) -> str:
    names = list(dict.fromkeys(r["contender"] for r in rows))
    by = {(r["round"], r["contender"]): r for r in rows}
    got = sorted({r["round"] for r in rows})
    head = ["contender"] + [f"round {i} images/s (load before)" for i in got] + ["min", "max", "spread"]
    body = []
    for n in names:
        v = [by[(i, n)]["images_per_s"] for i in got if (i, n) in by]
        cells = [f"{by[(i, n)]['images_per_s']:.3f} ({by[(i, n)]['loadavg_before'].split()[0]})" if (i, n) in by else "-"
                 for i in got]
        body.append([n, *cells, min(v), max(v), f"{100 * (max(v) - min(v)) / min(v):.0f}%"])
    ratios = [by[(i, "tessera c=8")]["images_per_s"] / by[(i, "dalle-pytorch fixed cache")]["images_per_s"]
              for i in got if (i, "tessera c=8") in by and (i, "dalle-pytorch fixed cache") in by]
    parts = list(prof["tessera (8 rows)"])
    ours, theirs = prof["tessera (8 rows)"], prof["dalle-pytorch fixed cache (batch 8)"]
    their_keys = list(theirs)
    prow = [[a, ours[a], b, theirs[b]] for a, b in zip(parts, their_keys)]
    return "\n\n".join([
        table(head, body),
        "Ratio served Tessera c=8 / fixed DALLE-pytorch batch 8, per round: "
        + ", ".join(f"{x:.2f}x" for x in ratios) + " (bar: 1.5x).",
        f"Cache-fix check: greedy tokens (filter_thres 1.0) of the fixed cached path vs the uncached path, "
        f"{check['rows']} rows, first {check['steps']} image tokens: equal = {check['equal']}.",
        f"As shipped is extrapolated: the first {tail} and the last {tail} steps of a batch-{8} generate_images "
        "(the last ones by priming with a random image, num_init_img_tokens = 256 - n) are timed, step time is fit "
        "linearly in the step number (least squares), summed over the 256 steps, plus the timed VAE decode.",
        "Per decode step at 8 rows, mean ms over one whole image:\n\n"
        + table(["part (Tessera)", "ms", "part (DALLE-pytorch cached)", "ms"], prow)
        + "\n\nTimed by wrapping each part's method (inclusive wall time; a part = its method minus those inside it); "
        "the text prefill is left out of both. Rotary itself (rotating q, k, v) is inside attention on both sides.",
    ])


FAMILIES = {"dalle-pytorch": dalle_pytorch}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tessera.bench.families", description=__doc__.split("\n\n")[0])
    ap.add_argument("family", choices=sorted(FAMILIES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--profile-only", action="store_true", help="keep --out's rows.json, redo the per-step profile")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    s = settings()
    _, body = FAMILIES[args.family](args.rounds, args.out, profile_only=args.profile_only)
    cmd = "python -m tessera.bench.families " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "results.md").write_text(
        f"# {args.family}: served Tessera vs the project's own sampler\n\n`{cmd}` (from the repository root)\n\n"
        f"Settings: torch {s['torch']}, torch.get_num_threads() = {s['threads']} on {s['cpus']} CPUs, "
        f"OMP/GOMP/MKL variables: {s['omp'] or 'none'}, commit {s['commit']}, Python {s['python']}. "
        f"Load average (1/5/15 min) before each run is in the table and rows.json.\n\n{body}\n")
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
