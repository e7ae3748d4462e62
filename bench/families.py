"""Model families served by Tessera against their own projects' samplers, at realistic shapes.

    python -m tessera.bench.families dalle-pytorch --rounds 3 --out docs/performance/dalle-pytorch-2026-12-06
    python -m tessera.bench.families min-dalle --rounds 2 --out docs/performance/min-dalle-2026-12-06

One function per family (`dalle_pytorch`, `min_dalle`). Each builds a random-weight checkpoint
with the project's own classes (min-dalle: DALL·E Mini's shapes, saved in min-dalle's models_root
layout; --root keeps it between runs), runs interleaved rounds (round r runs every contender once,
in the same order), profiles one decode step of each side (ours in the precision the served OPs
pick, dtype auto) and puts ours against this machine's peak (bench/roofline.py: its FLOP/s and
weight bytes/s as shares of a matmul and a bandwidth probe), and writes rows.json (every raw row)
and results.md into --out. The checkpoints are built with tessera.bench.checkpoints, as the
tests build their tiny ones, and the projects imported through tessera.bench.references (the
bench's `references` extra). --smoke runs min-dalle at a tiny shape, to check the script end to
end in a minute.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import torch

from tessera.bench.checkpoints import CORPUS, build_detoker, save_checkpoint, save_min_dalle, train_dalle_hparams
from tessera.bench.references import import_dalle_pytorch, import_min_dalle
from tessera.bench.roofline import (Peak, StepCost, count_step, live_prefix, measure_peak, peak_line, roofline_line,
                                    share)
from tessera.bench.servers import ServerProcess

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


def serving(model: Path) -> ServerProcess:
    """`tessera serve` on the shipped configuration with `model`, logging at INFO (the bench keeps
    its memory lines)."""
    from tessera.server.defaults import DEFAULT_CONFIG
    return ServerProcess(model.name, {**copy.deepcopy(DEFAULT_CONFIG), "model": str(model)}, log_level="INFO")


def closed_loop(target: str, c: int, n: int, seed0: int, prompts: list[str] = PROMPTS, candidates: int = 1) -> dict:
    """c clients, each sending its next request when its last returns, n requests in all (one
    image each, of `candidates`)."""
    from tessera.clients import AsyncTesseraClient

    async def run():
        client = AsyncTesseraClient(target, timeout=3600)
        todo = iter(range(n))
        lat = []

        async def one_client():
            for i in todo:
                t = time.perf_counter()
                gen = await client.generate(prompts[i % len(prompts)], num_images=1, num_candidates=candidates,
                                            seed=seed0 + i)
                assert len(gen.images) == 1
                lat.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(c)))
        wall = time.perf_counter() - t0
        await client.close()
        lat.sort()
        return {"images": n, "wall_s": wall, "images_per_s": n / wall, "latency_p50_s": lat[len(lat) // 2],
                "latency_p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "latency_max_s": lat[-1]}
    return asyncio.run(run())


def _roofline(model, cache, rows: int, step_ms: float, peak: Peak | None) -> dict | None:
    """The decode step against `peak` (bench/roofline.py) at the profile's mean step time: its
    FLOPs and weight bytes counted from the model's own calls at the first and the last step
    (their mean is the image's: attention grows linearly), over the cache the profile just
    filled (nothing reads it again)."""
    if peak is None:
        return None
    zeros = torch.zeros(rows, dtype=torch.long)
    cost = StepCost.mean([count_step(lambda at=at: model.decode_step(zeros, torch.full((rows,), at), cache,
                                                                     **live_prefix(model, at)), rows)
                          for at in (0, model.image_len - 2)])
    return {**share(cost, step_ms / 1e3, peak), "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}


def roofline_part(peak: dict, label: str, roof: dict) -> str:
    """results.md's roofline paragraph: the peak, then the step against it."""
    return (f"Roofline (bench/roofline.py; measured in process just before the profile): {peak['line']}.\n\n"
            f"- {roofline_line(label, roof)}.\n\nA step's FLOPs and weight bytes are counted from the model's "
            "own calls (each Linear: 2 x rows x its parameters, its weight read once a step; attention: over the "
            "positions the step attends to, its K/V read from the cache) at the first and the last step; its time "
            "is the profile's mean decode_step (the draw left out). 100% of the roofline is a step at the slower of "
            "the matmul peak in its precision and the memory peak.")


def probe(seconds: float) -> tuple[Peak, dict]:
    """This machine's CPU peak, and its JSON form with its printed line."""
    peak = measure_peak("cpu", seconds)
    line = peak_line(peak)
    print(line, flush=True)
    return peak, {**peak.to_dict(), "line": line}


class Timers:
    """Inclusive wall time of chosen methods, patched onto their classes (restored by undo)."""

    def __init__(self):
        self.total, self.calls, self._undo = defaultdict(float), defaultdict(int), []

    def wrap(self, cls, name: str, label: str):
        orig = getattr(cls, name)

        @functools.wraps(orig)  # its signature stays readable (bench/roofline.py's live_prefix reads it)
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
    dp = import_dalle_pytorch()
    torch.manual_seed(0)
    dalle = dp.DALLE(vae=dp.DiscreteVAE(**DP_VAE), **DP_SHAPE).eval()
    return dp, dalle, save_checkpoint(workdir / "dalle-512x8.pt", dalle, train_dalle_hparams(DP_SHAPE), DP_VAE)


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


def _profile_ours(ckpt: Path, rows: int, peak: Peak | None = None, dtype: str = "auto", live: bool = True) -> dict:
    """Our decode step at `rows` rows over one whole image, split by part (mean ms per step);
    `_roofline`: the step against `peak`. `dtype`: the OPs' setting; `live`: attend over the
    cache's live prefix (False: the whole cache, as before 2026-12-06)."""
    from tessera.ops.families.base import ModelSpec
    from tessera.ops.families.dalle_pytorch import model as M
    from tessera.ops.sampling import sample_tokens
    from tessera.ops.shared import bundle_for
    bundle = bundle_for(ModelSpec(path=str(ckpt)), "cpu", dtype)  # as the served OPs load it
    model, k = bundle.transformer, bundle.sampling.top_k
    cache = model.new_cache(rows, "cpu", bundle.dtype)
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
            logits = model.decode_step(tok, torch.full((rows,), i), cache, **(live_prefix(model, i) if live else {}))
    T.undo()
    n = model.image_len - 1
    ms = {k: 1e3 * v / n for k, v in T.total.items()}
    return {"_roofline": _roofline(model, cache, rows, ms["step"], peak),
            "embedding, rotary table, step setup": ms["step"] - ms["layers"] - ms["logits"],
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
                  profile_only: bool = False, probe_seconds: float = 0.5) -> tuple[list, str]:
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
        measured = settings()
        with ExitStack() as stack:
            server = stack.enter_context(serving(ckpt)) if rounds else None
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
                    (out / "rows.json").write_text(json.dumps({"settings": measured, "check": check, "rows": rows},
                                                              indent=1))
        peak, peak_json = probe(probe_seconds)
        prof = {"tessera (8 rows)": _profile_ours(ckpt, batch, peak),
                "dalle-pytorch fixed cache (batch 8)": _profile_dalle(dp, dalle, text)}
    roof = {"peak": peak_json, "tessera (8 rows)": prof["tessera (8 rows)"].pop("_roofline")}
    print(roofline_line("tessera's decode step", roof["tessera (8 rows)"]), flush=True)
    (out / "rows.json").write_text(json.dumps({"settings": kept or measured, "check": check, "rows": rows,
                                               "profile_settings": measured, "profile_ms_per_step": prof,
                                               "roofline": roof}, indent=1))
    return rows, _dp_report(rows, check, prof, rounds, tail, roof)


def _rounds_table(rows, label: str, cell, digits: int):
    """Each contender's images/s in each round (`cell` formats one row), with min, max and spread:
    (names, rows by (round, contender), the rounds, the table's head, its body)."""
    names = list(dict.fromkeys(r["contender"] for r in rows))
    by = {(r["round"], r["contender"]): r for r in rows}
    got = sorted({r["round"] for r in rows})
    head = ["contender"] + [f"round {i} images/s ({label})" for i in got] + ["min", "max", "spread"]
    body = []
    for n in names:
        v = [by[(i, n)]["images_per_s"] for i in got if (i, n) in by]
        cells = [cell(by[(i, n)]) if (i, n) in by else "-" for i in got]
        body.append([n, *cells, f"{min(v):.{digits}f}", f"{max(v):.{digits}f}", f"{100 * (max(v) - min(v)) / min(v):.0f}%"])
    return names, by, got, head, body


def _dp_report(rows, check, prof, rounds, tail, roof) -> str:
    names, by, got, head, body = _rounds_table(
        rows, "load before", lambda r: f"{r['images_per_s']:.3f} ({r['loadavg_before'].split()[0]})", 3)
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
        roofline_part(roof["peak"], "Tessera's decode step", roof["tessera (8 rows)"]),
    ])


# -- min-dalle --------------------------------------------------------------------------------

# DALL·E Mini's shapes (min-dalle's MinDalle constants for is_mega=False).
MD_SHAPE = dict(layers=12, embed=1024, heads=16, glu=2730, text_vocab=50264, image_vocab=16384)
MD_TINY = dict(layers=2, embed=128, heads=2, glu=96, text_vocab=50264, image_vocab=16384)  # --smoke only


def _md_build(root: Path, shape: dict) -> Path:
    """min-dalle's own DalleBartEncoder/DalleBartDecoder/VQGanDetokenizer with random weights, saved
    as ROOT/dalle_bart_mini/{encoder.pt,decoder.pt,vocab.json,merges.txt} + ROOT/vqgan/detoker.pt
    (build_detoker: conv_out scaled so pixels are not all clipped). A BPE learned from the tests'
    corpus and the prompts (ids well under text_vocab). An existing ROOT is reused."""
    model_dir = root / "dalle_bart_mini"
    if (model_dir / "decoder.pt").exists() and (root / "vqgan" / "detoker.pt").exists():
        return root
    (root / "vqgan").mkdir(parents=True, exist_ok=True)
    build_detoker(root / "vqgan" / "detoker.pt")
    save_min_dalle(model_dir, shape, CORPUS + " " + " ".join(PROMPTS), 300, seed=1, perturb=False)
    return root


def _md_offline(md_module) -> None:
    """MinDalle.init_tokenizer requests config.json from the hub whatever is on disk (the reply is
    discarded): answer that one with None, refuse anything else, never reach the network."""
    def get(url, *args, **kwargs):
        if url.endswith("config.json"):
            return None
        raise RuntimeError(f"min-dalle tried to download {url}")
    md_module.requests.get = get


def _md_load(root: Path, smoke: bool = False):
    """MinDalle(models_root=ROOT, is_mega=False, is_reusable=True, float32, cpu). --smoke: MinDalle
    hard-codes mini's shape, so the tiny one is set on a tokenizer-only instance before loading."""
    md = import_min_dalle().min_dalle
    _md_offline(md)
    with torch.no_grad():
        if not smoke:
            return md.MinDalle(models_root=str(root), dtype=torch.float32, device="cpu", is_mega=False,
                               is_reusable=True, is_verbose=False)
        dalle = md.MinDalle(models_root=str(root), dtype=torch.float32, device="cpu", is_mega=False,
                            is_reusable=False, is_verbose=False)
        dalle.layer_count, dalle.embed_count = MD_TINY["layers"], MD_TINY["embed"]
        dalle.attention_head_count, dalle.glu_embed_count = MD_TINY["heads"], MD_TINY["glu"]
        dalle.is_reusable = True
        dalle.init_encoder(), dalle.init_decoder(), dalle.init_detokenizer()
        return dalle


def _md_timers(dalle) -> Timers:
    """Inclusive wall time of min-dalle's decoder parts (class methods for the attentions, instance
    forwards for the decoder's GLUs, lm_head, the cross-attention's per-step K/V projections)."""
    from min_dalle.models import dalle_bart_decoder as D
    T = Timers()
    T.wrap(D.DalleBartDecoder, "sample_tokens", "step")
    T.wrap(D.DalleBartDecoder, "forward", "forward")
    T.wrap(D.DecoderSelfAttention, "forward", "self")
    T.wrap(D.DecoderCrossAttention, "forward", "cross")
    for layer in dalle.decoder.layers:
        for mod, label in ((layer.glu, "glu"), (layer.encoder_attn.k_proj, "cross_kv"),
                           (layer.encoder_attn.v_proj, "cross_kv")):
            T.wrap(mod, "forward", label)
    T.wrap(dalle.decoder.lm_head, "forward", "logits")
    T.wrap(dalle.detokenizer, "forward", "vqgan")
    return T


def _md_generate(dalle, grid: int, seed: int) -> dict:
    """One generate_images call (grid**2 images of one prompt), the model defaults; its decoder
    steps split by part (wrapped methods, ~10k timer calls a run: negligible)."""
    T = _md_timers(dalle)
    t = time.perf_counter()
    try:
        with torch.no_grad():
            images = dalle.generate_images(text=PROMPTS[seed % len(PROMPTS)], seed=seed, grid_size=grid,
                                           supercondition_factor=16, top_k=256, temperature=1)
    finally:
        T.undo()
    wall = time.perf_counter() - t
    n = grid ** 2
    assert images.shape[0] == n
    steps = T.calls["step"]
    ms = {k: 1e3 * v / steps for k, v in T.total.items() if k != "vqgan"}
    split = {"self-attention (K/V cache write, attend, out_proj)": ms["self"],
             "cross-attention: K/V of the encoder state, recomputed every step": ms["cross_kv"],
             "cross-attention: q, attend, out_proj": ms["cross"] - ms["cross_kv"],
             "GLU": ms["glu"], "logits (lm_head, all 16,385 rows)": ms["logits"],
             "norms, residuals, embedding": ms["forward"] - ms["self"] - ms["cross"] - ms["glu"] - ms["logits"],
             "the draw (guidance, full sort, exp, multinomial)": ms["step"] - ms["forward"],
             "total per step": ms["step"]}
    return {"images": n, "wall_s": wall, "images_per_s": n / wall, "rows_per_step": 2 * n, "steps": steps,
            "step_ms": split, "vqgan_s_per_image": T.total["vqgan"] / n,
            "sampling_s": T.total["step"], "rest_s": wall - T.total["step"] - T.total["vqgan"]}


def _profile_md_ours(root: Path, rows: int, images: int = 2, peak: Peak | None = None, dtype: str = "auto",
                     live: bool = True) -> dict:
    """Our decode step at `rows` rows (rows/2 guided images: each with its unconditional twin, as the
    sampler lays them out) over one whole image, split by part (mean ms per step); the draw is the
    sampler's own guide + sample_tokens at the model defaults; the VQGAN decode timed per image.
    `dtype`: the OPs' setting; `live`: attend over the live prefix (False: the whole cache)."""
    from tessera.ops.families.base import ModelSpec
    from tessera.ops.sampling import guide, row_uniforms, sample_tokens
    from tessera.ops.shared import bundle_for
    bundle = bundle_for(ModelSpec(path=str(root)), "cpu", dtype)  # as the served OPs load it
    model, d = bundle.transformer, bundle.sampling
    half = rows // 2
    cache = model.new_cache(rows, "cpu", bundle.dtype)
    tok = bundle.tokenizer
    text = torch.tensor([tok.encode_prompt(PROMPTS[i % len(PROMPTS)]).ids for i in range(half)]
                        + [tok.empty()] * half)
    T = Timers()
    T.wrap(model, "decode_step", "step")
    for layer in model.decoder.layers:
        for mod, label in ((layer.self_attn.q_proj, "self"), (layer.self_attn.k_proj, "self"),
                           (layer.self_attn.v_proj, "self"), (layer.encoder_attn.q_proj, "cross"),
                           (layer.glu, "glu")):
            T.wrap(mod, "forward", label)
        T.wrap(layer.self_attn, "attend", "self")
        T.wrap(layer.encoder_attn, "attend", "cross")
    T.wrap(model.decoder.lm_head, "forward", "logits")
    temp, top_k, top_p, scale = (torch.full((half,), float(d.temperature)), torch.full((half,), int(d.top_k)),
                                 torch.full((half,), float(d.top_p)), torch.full((half,), float(d.guidance_scale)))
    uni = torch.stack([row_uniforms(i, model.image_len) for i in range(half)])
    pick, grid = 0.0, []
    with torch.inference_mode():
        logits = model.prefill(text, cache, torch.arange(rows))
        T.total.clear()
        for i in range(model.image_len):
            t = time.perf_counter()
            lg = logits.float()
            toks = sample_tokens(guide(lg[:half], lg[half:], scale), temp, top_k, top_p, uni[:, i])
            pick += time.perf_counter() - t
            grid.append(toks)
            if i + 1 < model.image_len:
                logits = model.decode_step(torch.cat([toks, toks]), torch.full((rows,), i), cache,
                                           **(live_prefix(model, i) if live else {}))
        T.undo()
        roof = _roofline(model, cache, rows, 1e3 * T.total["step"] / (model.image_len - 1), peak)
        grid = torch.stack(grid, 1)  # (half, 256)
        vq = []
        for j in range(min(images, half)):
            t = time.perf_counter()
            bundle.dvae.pixels(grid[j:j + 1])
            vq.append(time.perf_counter() - t)
    n = model.image_len - 1
    ms = {k: 1e3 * v / n for k, v in T.total.items()}
    draw = 1e3 * pick / model.image_len
    return {"self-attention (q/k/v, cache write excluded, attend, out_proj)": ms["self"],
            "cross-attention (q, attend over the cached text K/V, out_proj)": ms["cross"],
            "GLU": ms["glu"], "logits (lm_head, 16,384 image rows)": ms["logits"],
            "norms, residuals, embedding, cache writes, masks":
                ms["step"] - ms["self"] - ms["cross"] - ms["glu"] - ms["logits"],
            f"the draw (guide + sample_tokens, top_k {d.top_k}: float64 softmax + full sort)": draw,
            "total per step": ms["step"] + draw,
            "_vqgan_s_per_image": sum(vq) / len(vq), "_vqgan_runs": vq, "_roofline": roof}


def _rss(pid: int) -> dict:
    st = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", st).group(1)) / 2 ** 20 for k in ("VmRSS", "VmHWM")}  # GiB


def min_dalle(rounds: int, out: Path, levels=(1, 4, 16), grids=(1, 2), requests: dict | None = None,
              root: Path | None = None, smoke: bool = False, profile_only: bool = False,
              probe_seconds: float = 0.5) -> tuple[list, str]:
    """Served Tessera at `levels` (one image a request, closed loop, max(4, 2c) requests unless
    `requests` says) against min-dalle's generate_images at `grids`, interleaved rounds; then our
    step profiled at the c=4 batch (8 rows). `root`: keep the built model there (built if absent)."""
    shape = MD_TINY if smoke else MD_SHAPE
    requests = requests or {}
    rows, kept, mem = [], None, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = _md_build(Path(root or tmp) / ("tiny" if smoke else "mini"), shape)
        print("model root:", root, flush=True)
        if profile_only:
            old = json.loads((out / "rows.json").read_text())
            rows, rounds, kept, mem = old["rows"], 0, old["settings"], old.get("memory", {})
        else:
            t = time.perf_counter()
            dalle = _md_load(root, smoke)
            mem["min-dalle load s"] = time.perf_counter() - t
            mem["bench process after MinDalle load (GiB RSS)"] = _rss(os.getpid())["VmRSS"]
        measured = settings()
        with ExitStack() as stack:
            server = stack.enter_context(serving(root)) if rounds else None
            if server:
                closed_loop(server.target, 1, 1, 10 ** 6)  # warm-up
            for r in range(rounds):
                names = [f"tessera c={c}" for c in levels] + [f"min-dalle grid {g}" for g in grids]
                for name in names:
                    la = loadavg()
                    print(f"round {r} {name} load {la}", flush=True)
                    if name.startswith("tessera"):
                        c = int(name.split("=")[1])
                        row = closed_loop(server.target, c, requests.get(c, max(4, 2 * c)), seed0=1000 * r + 100 * c)
                    else:
                        row = _md_generate(dalle, int(name.split()[-1]), seed=1 + 10 * r)
                    rows.append({"round": r, "contender": name, "loadavg_before": la, **row})
                    print(f"  {row['images_per_s']:.4f} images/s ({row['wall_s']:.1f} s)", flush=True)
                    (out / "rows.json").write_text(json.dumps({"settings": measured, "rows": rows, "memory": mem},
                                                              indent=1))
            if server:
                mem["tessera server (GiB, RSS now / peak)"] = _rss(server.proc.pid)
                mem["tessera server log"] = [ln for ln in server.output().splitlines()
                                             if "cache for" in ln or "weights" in ln]
                mem["bench process with MinDalle (GiB, RSS now / peak)"] = _rss(os.getpid())
        if not profile_only:
            del dalle
        prof_la = loadavg()
        peak, peak_json = probe(probe_seconds)
        prof = _profile_md_ours(root, rows=8, peak=peak)
    roof = {"peak": peak_json, "tessera (8 rows)": prof.pop("_roofline")}
    print(roofline_line("tessera's decode step", roof["tessera (8 rows)"]), flush=True)
    (out / "rows.json").write_text(json.dumps({"settings": kept or measured, "rows": rows, "memory": mem,
                                               "profile_settings": measured, "profile_loadavg_before": prof_la,
                                               "profile_ms_per_step": prof, "shape": shape, "roofline": roof},
                                              indent=1))
    return rows, _md_report(rows, prof, mem, shape, prof_la, roof)


def _md_flops(embed: int, layers: int, glu: int, image_vocab: int = 16384, text: int = 64, pos: int = 128) -> float:
    """Multiply-adds a decode step does per row: self-attention q/k/v/out (4 E^2), cross-attention
    q/out (2 E^2, its K/V cached), GLU (3 E G), attention over `pos` image and `text` positions
    (2 E each), and the logits (E V)."""
    return layers * (6 * embed ** 2 + 3 * embed * glu + 2 * embed * (pos + text)) + embed * image_vocab


def _md_report(rows, prof, mem, shape, prof_la, roof) -> str:
    names, by, got, head, body = _rounds_table(
        rows, "s, load before",
        lambda r: f"{r['images_per_s']:.4f} ({r['wall_s']:.0f} s, {r['loadavg_before'].split()[0]})", 4)
    reqs = {n: by[(got[0], n)]["images"] for n in names if n.startswith("tessera") and (got[0], n) in by}
    ratios = [by[(i, "tessera c=4")]["images_per_s"] / by[(i, "min-dalle grid 2")]["images_per_s"]
              for i in got if (i, "tessera c=4") in by and (i, "min-dalle grid 2") in by]
    md_last = next((by[(i, "min-dalle grid 2")] for i in reversed(got) if (i, "min-dalle grid 2") in by), None)
    ours = {k: v for k, v in prof.items() if not k.startswith("_")}
    prow = [[k, f"{v:.1f}", f"{100 * v / ours['total per step']:.0f}%"] for k, v in ours.items()]
    parts = [table(head, body),
             "Requests per level (one image each, closed loop): "
             + ", ".join(f"{n}: {k}" for n, k in reqs.items()) + ". min-dalle: one generate_images call per "
             "grid size per round (grid 1: 1 image, 2 rows a step; grid 2: 4 images, 8 rows a step).",
             "Ratio served Tessera c=4 / min-dalle grid 2, per round: "
             + ", ".join(f"{x:.2f}x" for x in ratios) + " (bar: 1.2x).",
             f"Our decode step at the c=4 batch (8 rows: 4 captions + their unconditional twins), mean ms per "
             f"step over one whole image, measured in process after the rounds (load before: {prof_la}):\n\n"
             + table(["part", "ms", "share"], prow)
             + f"\n\nVQGAN decode (ours, one image at a time): {prof['_vqgan_s_per_image']:.2f} s per image "
             f"({', '.join(f'{x:.2f}' for x in prof['_vqgan_runs'])} s)."]
    if md_last:
        sp = md_last["step_ms"]
        parts.append(f"min-dalle's step at grid 2 (8 rows), mean ms per step over round {md_last['round']}'s call:\n\n"
                     + table(["part", "ms", "share"],
                             [[k, f"{v:.1f}", f"{100 * v / sp['total per step']:.0f}%"] for k, v in sp.items()])
                     + f"\n\nmin-dalle VQGAN decode: {md_last['vqgan_s_per_image']:.2f} s per image (4 in one batch); "
                     f"sampling {md_last['sampling_s']:.1f} s, the rest (tokenize, encoder) {md_last['rest_s']:.1f} s.")
    mini = _md_flops(shape["embed"], shape["layers"], shape["glu"])
    mega = _md_flops(2048, 24, 4096)
    step8 = ours["total per step"]
    est = {"mega/mini multiply-adds per row-step": mega / mini,
           "mini ms per step at 8 rows (measured)": step8,
           "mega ms per step at 8 rows (estimate: mini x FLOP ratio)": step8 * mega / mini,
           "mega s per image at c=4 (estimate: 256 steps / 4 images + the VQGAN)":
               256 * step8 * mega / mini / 4e3 + prof["_vqgan_s_per_image"]}
    parts.append("Memory and the mega estimate:\n\n" + "\n".join(f"- {k}: {v}" for k, v in mem.items())
                 + "\n" + "\n".join(f"- {k}: {v:.2f}" for k, v in est.items()))
    parts.append(roofline_part(roof["peak"], "Tessera's decode step", roof["tessera (8 rows)"]))
    return "\n\n".join(parts)


FAMILIES = {"dalle-pytorch": dalle_pytorch, "min-dalle": min_dalle}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tessera.bench.families", description=__doc__.split("\n\n")[0])
    ap.add_argument("family", choices=sorted(FAMILIES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--profile-only", action="store_true", help="keep --out's rows.json, redo the per-step profile")
    ap.add_argument("--root", type=Path, help="min-dalle: build the model under this folder (reused if there)")
    ap.add_argument("--requests", default="", help="min-dalle: requests per level, e.g. 16:16 (default max(4, 2c))")
    ap.add_argument("--smoke", action="store_true", help="min-dalle: a tiny shape, to check the script runs")
    ap.add_argument("--probe-seconds", type=float, default=0.5,
                    help="the roofline's budget for each probe of the machine's peak (bench/roofline.py)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    s = settings()
    extra = {}
    if args.family == "min-dalle":
        extra = dict(root=args.root, smoke=args.smoke,
                     requests={int(a): int(b) for a, b in (x.split(":") for x in args.requests.split(",") if x)})
    _, body = FAMILIES[args.family](args.rounds, args.out, profile_only=args.profile_only,
                                    probe_seconds=args.probe_seconds, **extra)
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
