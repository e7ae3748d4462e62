"""This machine's peak, and how far a decode step is from it: the bench's roofline.

Two probes (`measure_peak`), each the best of repeated runs over `seconds`:
- a square matmul in each precision the device runs (float32, bfloat16, float16), FLOP/s;
- memory bandwidth, bytes/s: a sum reads a buffer several times the last-level cache, a copy
  reads and writes one; the faster of the two is the bound.

A decode step's work comes from the model itself (`count_step`, one step run under a
counting mode): every `F.linear` it calls (or matmul of a parameter) is 2 x rows x in x out
FLOPs and reads its weight (and bias) once, by the weight's dtype. Attention is counted over
the positions the step attends to: a matmul of two activations (q @ k^T, p @ v over the
cache's live prefix, as ops/families/base.py's `attend` does) is 2 x its output x its inner
size and reads its right operand from the cache; a `scaled_dot_product_attention` is
4 x head_dim FLOPs per query-key pair its mask keeps (whatever the kernel computes behind the
mask) and reads those keys' K/V. Norms, embeddings and the draw are left out: next to the
matmuls they are a rounding error in FLOPs and bytes.

`share` puts a cost and a measured step time together: achieved FLOP/s and weight bytes/s as
shares of the peaks, and the roofline bound (the slower of the step's FLOPs at the matmul peak
of their precision and its bytes at the bandwidth peak) as a share of the step's time.

    peak = measure_peak("cpu", seconds=0.5)
    cost = count_step(lambda: model.decode_step(tokens, index, cache))
    print(peak_line(peak), roofline_line("decode step", share(cost, step_s, peak)), sep="\\n")
"""
from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ENV = ("OMP_", "GOMP_", "KMP_", "MKL_", "ONEDNN_", "DNNL_")
_FLAGS = ("amx_bf16", "amx_fp16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def thread_settings() -> dict:
    """What the probes (and the step beside them) ran under: torch's thread counts, the
    OpenMP/MKL/oneDNN variables set, the cores this process may use, the CPU's matmul flags."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        flags = set()
    return {"torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENV)},
            "cpu_flags": [f for f in _FLAGS if f in flags]}


@dataclass
class Peak:
    """The probes' figures on one device. A precision the device does not run is absent."""
    device: str
    matmul_flops_per_s: dict[str, float]   # "float32" -> FLOP/s
    matmul_size: dict[str, int]            # the square matmul's side, per precision
    read_bytes_per_s: float
    copy_bytes_per_s: float
    buffer_bytes: int
    seconds: float                         # each probe's budget
    threads: dict = field(default_factory=thread_settings)
    name: str = ""                         # the GPU's name on CUDA

    @property
    def bytes_per_s(self) -> float:
        """The bandwidth bound: the faster of the read and the copy."""
        return max(self.read_bytes_per_s, self.copy_bytes_per_s)

    def to_dict(self) -> dict:
        return {**asdict(self), "bytes_per_s": self.bytes_per_s}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_s(fn: Callable[[], Any], device: torch.device, seconds: float) -> float:
    """The fastest of repeated calls of `fn` (after one warm-up call) within `seconds`; at least two."""
    fn()
    _sync(device)
    best, end, runs = float("inf"), time.perf_counter() + seconds, 0
    while runs < 2 or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
        runs += 1
    return best


def matmul_peak(dtype: torch.dtype, device: str = "cpu", size: int = 1024,
                seconds: float = 0.5) -> tuple[float, int] | None:
    """(FLOP/s, side) of a size x size matmul in `dtype`, or None where the device does not run
    it. A precision far slower than the rest (float16 on a CPU without its instructions takes
    seconds at 1024) is measured at a smaller side, so that each call stays within a quarter
    of the budget."""
    dev = torch.device(device)
    side = min(size, 256)
    try:
        a = torch.randn(side, side, device=dev).to(dtype)
        torch.mm(a, a)
        _sync(dev)
        t = time.perf_counter()
        torch.mm(a, a)
        _sync(dev)
        small = time.perf_counter() - t
    except (RuntimeError, TypeError):  # "not implemented for 'Half'" and the like
        return None
    while size > side and small * (size / side) ** 3 > seconds / 4:
        size //= 2
    a = torch.randn(size, size, device=dev).to(dtype)
    b = torch.randn(size, size, device=dev).to(dtype)
    out = torch.empty(size, size, device=dev, dtype=dtype)
    best = _best_s(lambda: torch.mm(a, b, out=out), dev, seconds)
    return 2 * size ** 3 / best, size


def bandwidth(device: str = "cpu", megabytes: int = 256, seconds: float = 0.5) -> tuple[float, float, int]:
    """(read bytes/s, copy bytes/s, buffer bytes): a sum over a float32 buffer of `megabytes`
    (its bytes read once) and a copy of it (read and written: twice its bytes). The default is
    eight times the 32 MiB L3 lscpu reports on our machine: a smaller buffer is read partly from
    the cache (there, 16 MiB reads at ~200 GB/s, 128 MiB at ~100, 256 MiB and more at 80-90)."""
    dev = torch.device(device)
    n = max(1, megabytes * 2 ** 20 // 4)
    x = torch.ones(n, device=dev)  # written: its pages are touched before the timing
    y = torch.empty_like(x)
    y.fill_(0)
    read = _best_s(lambda: x.sum(), dev, seconds / 2)
    copy = _best_s(lambda: y.copy_(x), dev, seconds / 2)
    nbytes = n * 4
    return nbytes / read, 2 * nbytes / copy, nbytes


def measure_peak(device: str = "cpu", seconds: float = 0.5, size: int = 1024, megabytes: int = 256) -> Peak:
    """Both probes on `device`: a matmul per precision (each within `seconds`) and the bandwidth."""
    flops, sides = {}, {}
    for dtype in DTYPES:
        got = matmul_peak(dtype, device, size, seconds)
        if got is not None:
            flops[dtype_name(dtype)], sides[dtype_name(dtype)] = got
    read, copy, nbytes = bandwidth(device, megabytes, seconds)
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else ""
    return Peak(str(dev), flops, sides, read, copy, nbytes, seconds, name=name)


# -- a decode step's work, from the model ----------------------------------------------------

@dataclass
class StepCost:
    """One decode step's work at `rows` rows, by precision (the weights' or the queries' dtype)."""
    rows: int
    linear_flops: dict[str, float] = field(default_factory=dict)
    attention_flops: dict[str, float] = field(default_factory=dict)
    weight_bytes: dict[str, float] = field(default_factory=dict)   # each weight once a step
    cache_bytes: float = 0.0                                       # the live keys' and values' K/V
    linears: float = 0                                             # linear layers' calls
    attentions: float = 0                                          # attention calls

    @property
    def flops(self) -> dict[str, float]:
        out = dict(self.linear_flops)
        for k, v in self.attention_flops.items():
            out[k] = out.get(k, 0.0) + v
        return out

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())

    @property
    def total_weight_bytes(self) -> float:
        return sum(self.weight_bytes.values())

    @staticmethod
    def mean(costs: list[StepCost]) -> StepCost:
        """The mean of steps' costs (attention grows linearly with the position: the first and the
        last step's mean is the whole image's)."""
        n = len(costs)

        def avg(name: str) -> dict[str, float]:
            keys = {k for c in costs for k in getattr(c, name)}
            return {k: sum(getattr(c, name).get(k, 0.0) for c in costs) / n for k in sorted(keys)}
        return StepCost(costs[0].rows, avg("linear_flops"), avg("attention_flops"), avg("weight_bytes"),
                        sum(c.cache_bytes for c in costs) / n, sum(c.linears for c in costs) / n,
                        sum(c.attentions for c in costs) / n)

    def to_dict(self) -> dict:
        return {**asdict(self), "flops": self.flops, "total_flops": self.total_flops,
                "total_weight_bytes": self.total_weight_bytes}


def _add(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}


class _Counter(TorchFunctionMode):
    """Counts what each F.linear, matmul and scaled_dot_product_attention call does (see the module)."""

    def __init__(self, cost: StepCost):
        super().__init__()
        self.cost, self._weights = cost, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            self._linear(*args, **kwargs)
        elif func is F.scaled_dot_product_attention:
            self._attention(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in _MATMULS:
            self._matmul(args[0], args[1], out)
        return out

    def _weight(self, t: torch.Tensor | None) -> None:
        if t is not None and (t.data_ptr(), t.shape) not in self._weights:  # a shared weight is read once
            self._weights.add((t.data_ptr(), t.shape))
            _add(self.cost.weight_bytes, dtype_name(t.dtype), t.numel() * t.element_size())

    def _linear(self, x, weight, bias=None):
        c = self.cost
        rows = x.numel() // weight.shape[-1]
        _add(c.linear_flops, dtype_name(weight.dtype), 2.0 * rows * weight.numel())
        c.linears += 1
        self._weight(weight)
        self._weight(bias)

    def _matmul(self, a, b, out):
        """A matmul of a parameter is a linear layer; of two activations, attention (q @ k^T, then
        p @ v: the right operand is read from the cache)."""
        c = self.cost
        flops = 2.0 * out.numel() * a.shape[-1]
        params = [t for t in (a, b) if isinstance(t, torch.nn.Parameter)]
        if params:
            _add(c.linear_flops, dtype_name(params[0].dtype), flops)
            c.linears += 1
            for t in params:
                self._weight(t)
            return
        _add(c.attention_flops, dtype_name(a.dtype), flops)
        c.cache_bytes += b.numel() * b.element_size()
        c.attentions += 0.5  # two matmuls an attention

    def _attention(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **_):
        c = self.cost
        *batch, tq, d = q.shape
        tk = k.shape[-2]
        shape = (*batch, tq, tk)
        if attn_mask is not None:
            live = attn_mask if attn_mask.dtype == torch.bool else attn_mask > torch.finfo(attn_mask.dtype).min / 2
            live = live.expand(shape)
        elif is_causal:
            live = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq).expand(shape)
        else:
            live = torch.ones((), dtype=torch.bool, device=q.device).expand(shape)
        pairs = float(live.sum())
        keys = float(live.any(dim=-2).sum())  # keys some query of the call reads
        _add(c.attention_flops, dtype_name(q.dtype), 2.0 * pairs * (d + v.shape[-1]))
        c.cache_bytes += keys * (d * k.element_size() + v.shape[-1] * v.element_size())
        c.attentions += 1


def live_prefix(model: Any, last: int) -> dict:
    """decode_step's keyword for a step whose rows sit at image index <= `last`, where the model
    takes one (`last`: attend over the cache's live prefix, as the sampler calls it); else none."""
    return {"last": last} if "last" in inspect.signature(type(model).decode_step).parameters else {}


def count_step(step: Callable[[], Any], rows: int) -> StepCost:
    """The work of one call of `step` (a decode step at `rows` rows), counted as it runs."""
    cost = StepCost(rows)
    with torch.inference_mode(), _Counter(cost):
        step()
    return cost


# -- the two together -------------------------------------------------------------------------

def share(cost: StepCost, step_s: float, peak: Peak) -> dict:
    """A step's achieved rates and their shares of `peak`, and the roofline bound.

    flop_share is the time the step's FLOPs take at the matmul peak of each one's precision over
    the step's time (for one precision: FLOP/s over that peak); None when the peak lacks a
    precision the step computes in. weight_byte_share is weight bytes/s over the bandwidth peak.
    roofline_share is the bound (the slower of compute and memory, weights and live K/V) over
    the step's time: 100% is a step at the machine's bound."""
    flops = cost.flops
    missing = [d for d in flops if d not in peak.matmul_flops_per_s]
    compute_s = None if missing else sum(f / peak.matmul_flops_per_s[d] for d, f in flops.items())
    memory_s = (cost.total_weight_bytes + cost.cache_bytes) / peak.bytes_per_s
    bound_s = memory_s if compute_s is None else max(compute_s, memory_s)
    return {"rows": cost.rows, "step_ms": 1e3 * step_s, "device": peak.device,
            "precisions": sorted(cost.weight_bytes, key=lambda d: -cost.weight_bytes[d]),
            "flops": cost.total_flops, "flops_per_s": cost.total_flops / step_s,
            "flop_share": None if compute_s is None else compute_s / step_s,
            "weight_bytes": cost.total_weight_bytes, "weight_bytes_per_s": cost.total_weight_bytes / step_s,
            "weight_byte_share": cost.total_weight_bytes / step_s / peak.bytes_per_s,
            "cache_bytes": cost.cache_bytes,
            "bound": "memory" if compute_s is None or memory_s >= compute_s else "compute",
            "bound_ms": 1e3 * bound_s, "roofline_share": bound_s / step_s,
            "missing_peaks": missing, "cost": cost.to_dict()}


def si(value: float, unit: str) -> str:
    """1.23e11, "FLOP/s" -> "123 GFLOP/s": three significant digits, an SI prefix."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def peak_line(peak: Peak) -> str:
    """One line: the device's peaks and the thread settings they were measured under."""
    t = peak.threads
    mm = ", ".join(f"{d} {si(f, 'FLOP/s')}" for d, f in peak.matmul_flops_per_s.items())
    env = " ".join(f"{k}={v}" for k, v in t["env"].items()) or "no OMP/MKL variables"
    return (f"peak on {peak.device}{' (' + peak.name + ')' if peak.name else ''}: matmul {mm}; memory "
            f"{si(peak.bytes_per_s, 'B/s')} (read {si(peak.read_bytes_per_s, 'B/s')}, copy "
            f"{si(peak.copy_bytes_per_s, 'B/s')}, {si(peak.buffer_bytes, 'B')} buffer); torch threads "
            f"{t['torch_threads']} (interop {t['interop_threads']}) on {t['affinity']} of {t['cpus']} CPUs, {env}, "
            f"CPU flags {' '.join(t['cpu_flags']) or 'none'}")


def roofline_line(label: str, r: dict) -> str:
    """One line: a step's time, FLOP/s and weight bytes/s as shares of the peak, and its bound."""
    flop = (f"{r['flop_share']:.1%} of the matmul peak" if r["flop_share"] is not None
            else f"no {'/'.join(r['missing_peaks'])} matmul peak")
    return (f"{label} at {r['rows']} rows ({'/'.join(r['precisions'])} weights): {r['step_ms']:.2f} ms a step; "
            f"{si(r['flops'], 'FLOP')} -> {si(r['flops_per_s'], 'FLOP/s')} = {flop}; weights "
            f"{si(r['weight_bytes'], 'B')} -> {si(r['weight_bytes_per_s'], 'B/s')} = {r['weight_byte_share']:.1%} "
            f"of the memory peak (+ {si(r['cache_bytes'], 'B')} live K/V); bound: {r['bound']}, "
            f"{r['bound_ms']:.2f} ms: the step runs at {r['roofline_share']:.1%} of the roofline")
