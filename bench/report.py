"""Summaries of a benchmark run: percentiles, server-side metrics, the table and the plot."""
from __future__ import annotations

import math
import statistics
import urllib.request
from collections import Counter

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1), linearly interpolated; NaN when there are no values."""
    return float(np.percentile(values, 100 * q)) if len(values) else float("nan")


def summarize(samples: list[dict], wall_s: float) -> dict:
    ok = [s for s in samples if s["code"] == "OK"]
    lat = [s["latency_s"] for s in ok]
    first = [s["first_event_s"] for s in ok if s["first_event_s"] is not None]
    return {
        "requests": len(samples), "ok": len(ok), "wall_s": wall_s,
        "images_per_s": sum(s["images"] for s in ok) / wall_s if wall_s else 0.0,
        "candidates_per_s": sum(s["candidates"] for s in ok) / wall_s if wall_s else 0.0,
        "requests_per_s": len(ok) / wall_s if wall_s else 0.0,
        "latency_ms": {k: 1000 * percentile(lat, q) for k, q in (("p50", .5), ("p90", .9), ("p99", .99))}
        | {"max": 1000 * max(lat) if lat else float("nan")},
        "first_progress_ms_p50": 1000 * percentile(first, .5),
        "errors": dict(Counter(s["code"] for s in samples if s["code"] != "OK")),
        "error_examples": {s["code"]: s.get("details", "") for s in samples if s["code"] != "OK"},
    }


def scrape(url: str) -> dict[tuple[str, str], float]:
    """Sums and counts of the engine's per-OP histograms, keyed (sample name, op)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith(("_sum", "_count")) and "op" in s.labels:
                out[(s.name, s.labels["op"])] = s.value
    return out


def server_split(before: dict, after: dict) -> dict:
    """Per OP over the run: mean rows per batch (or step), mean queue, device-wait and compute ms.

    The server's compute time of a call includes its wait for the device's turn; here the
    two are apart."""
    def d(name, op):
        return after.get((name, op), 0.0) - before.get((name, op), 0.0)
    ops = sorted({op for _, op in after})
    out = {}
    for op in ops:
        calls = d("tessera_op_batch_rows_count", op)
        rows = d("tessera_op_batch_rows_sum", op)
        q_n = d("tessera_op_queue_seconds_count", op)
        wait = d("tessera_op_device_wait_seconds_sum", op)
        compute = d("tessera_op_compute_seconds_sum", op) - wait
        out[op] = {
            "mean_rows_per_batch": rows / calls if calls else 0.0,
            "calls": calls,
            "mean_queue_ms": 1000 * d("tessera_op_queue_seconds_sum", op) / q_n if q_n else 0.0,
            "mean_device_wait_ms": 1000 * wait / calls if calls else 0.0,
            "mean_compute_ms": 1000 * compute / calls if calls else 0.0,
            "compute_s_total": compute,
        }
    return out


def bar_ratios(rows: list[dict]) -> dict[str, float]:
    """The issue's side-by-side ratios from the rows of one round (those its configs allow).

    speedup_c{N}: default / serial images/s at the highest concurrency both ran;
    saturation: default's best images/s / offline's; c1_latency: default's p50 at c=1 /
    offline's single-request p50; open_p50 and open_p99: default / static in the open loop;
    ceiling_c32 and ceiling_c1: default's c=32 images/s and c=1 p50 against the `ceiling`
    config's best throughput and best single-request p50 (best threading, see bench/ceiling.py).
    ray_vs_thread_c{N}: ray (sample and decode as Ray actors) / default images/s.
    vs_generic_c{N}: default / generic images/s at each concurrency both ran (issue 10's bar:
    at least 1.2 at c=1, 8 and 32); vs_generic_p50_c1: default's p50 / generic's at c=1 (bar:
    at most 1.0). `generic` is the request-level batching server of bench/generic.py.
    """
    closed = {(r["config"], r.get("concurrency")): r["summary"] for r in rows if "concurrency" in r}
    opened = {r["config"]: r["summary"] for r in rows if "rate" in r}
    out: dict[str, float] = {}
    both = sorted(c for (n, c) in closed if n == "default" and ("serial", c) in closed)
    if both:
        c = both[-1]
        out[f"speedup_c{c}"] = closed[("default", c)]["images_per_s"] / closed[("serial", c)]["images_per_s"]
    offline = next((s for (n, _), s in closed.items() if n == "offline"), None)
    default = [s for (n, _), s in closed.items() if n == "default"]
    if offline and default:
        out["saturation"] = max(s["images_per_s"] for s in default) / offline["images_per_s"]
        if ("default", 1) in closed:
            out["c1_latency"] = closed[("default", 1)]["latency_ms"]["p50"] / offline["latency_ms"]["p50"]
    ceiling = next((s for (n, _), s in closed.items() if n == "ceiling"), None)
    if ceiling and ("default", 32) in closed:
        out["ceiling_c32"] = closed[("default", 32)]["images_per_s"] / ceiling["images_per_s"]
    if ceiling and ("default", 1) in closed:
        out["ceiling_c1"] = closed[("default", 1)]["latency_ms"]["p50"] / ceiling["latency_ms"]["p50"]
    on_ray = sorted(c for (n, c) in closed if n == "ray" and ("default", c) in closed)
    if on_ray:  # mode: ray against thread mode (default), at the highest concurrency both ran
        c = on_ray[-1]
        out[f"ray_vs_thread_c{c}"] = closed[("ray", c)]["images_per_s"] / closed[("default", c)]["images_per_s"]
    for c in sorted(c for (n, c) in closed if n == "generic" and ("default", c) in closed):
        out[f"vs_generic_c{c}"] = closed[("default", c)]["images_per_s"] / closed[("generic", c)]["images_per_s"]
    if ("default", 1) in closed and ("generic", 1) in closed:
        default_p50, generic_p50 = (closed[(n, 1)]["latency_ms"]["p50"] for n in ("default", "generic"))
        out["vs_generic_p50_c1"] = default_p50 / generic_p50
    if "default" in opened and "static" in opened:
        for q in ("p50", "p99"):
            out[f"open_{q}"] = opened["default"]["latency_ms"][q] / opened["static"]["latency_ms"][q]
    return out


def ratio_table(per_round: list[dict[str, float]]) -> str:
    """One line per ratio: each round's value, then the median."""
    names = [k for k in per_round[0]] if per_round else []
    width = max([14, *map(len, names)])
    lines = []
    for k in names:
        values = [r[k] for r in per_round if k in r]
        lines.append(f"{k:<{width}} " + " ".join(f"{v:6.3f}" for v in values)
                     + f"   median {statistics.median(values):.3f}")
    return "\n".join(lines)


def table(rows: list[dict]) -> Table:
    """One line per row: throughput, latency percentiles, first event and errors (print with rich)."""
    t = Table(show_edge=False, pad_edge=False)
    for name, justify in (("config", "left"), ("mode", "left"), ("img/s", "right"), ("req/s", "right"),
                          ("p50 ms", "right"), ("p90 ms", "right"), ("p99 ms", "right"), ("max ms", "right"),
                          ("1st ev ms", "right"), ("errors", "right")):
        t.add_column(name, justify=justify)
    for r in rows:
        s = r["summary"]
        lat, first = s["latency_ms"], s["first_progress_ms_p50"]  # first: NaN where nothing streams
        name = r["config"] + (f"/{r['round'] + 1}" if "round" in r else "")
        t.add_row(name, r["mode"], f"{s['images_per_s']:.2f}", f"{s['requests_per_s']:.2f}",
                  *(f"{lat[k]:.1f}" for k in ("p50", "p90", "p99", "max")),
                  "–" if math.isnan(first) else f"{first:.0f}", str(sum(s["errors"].values())))
    return t


def _pyplot():
    """matplotlib's pyplot, drawing to files only. Imported when a plot is drawn, so that
    `tessera bench --help` and the reliability suite do not load it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("tessera bench draws bench.png with matplotlib, a dependency of the bench's "
                          "distribution: pip install -e ./bench") from exc
    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt
    return plt


def plot(series: dict[str, list[tuple[int, list[float], list[float]]]], path: str) -> None:
    """Save `figure(series)` as a PNG."""
    plt = _pyplot()
    fig = figure(series)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(series: dict[str, list[tuple[int, list[float], list[float]]]]):
    """Throughput and p99 latency against concurrency, a line per config (a matplotlib Figure).

    `series[config]` holds (concurrency, throughput per round, p99 ms per round); a line
    goes through each point's median, and the error bar spans its rounds' min to max.
    Both x axes are log2 (concurrency doubles). Latency's y axis is log10 where the p99s span
    a decade or more, labelled 100, 200, 500, 1,000...; over a narrower range a log axis has
    one tick or none, so there it is linear.
    """
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for name, points in series.items():
        points = sorted(points)
        xs = [c for c, _, _ in points]
        for ax, k in ((left, 1), (right, 2)):
            values = [np.asarray([v for v in p[k] if v == v] or [np.nan]) for p in points]  # NaN-free per point
            mid = np.array([np.median(v) for v in values])
            err = np.array([[m - v.min() for m, v in zip(mid, values)], [v.max() - m for m, v in zip(mid, values)]])
            ax.errorbar(xs, mid, yerr=err, marker="o", capsize=3, label=name)
    thru = "requests/s" if set(series) == {"engine"} else "images/s"
    left.set(ylabel=thru, title=f"throughput ({thru})")
    right.set(ylabel="p99 latency (ms)", title="p99 latency")
    p99s = [v for points in series.values() for _, _, p99 in points for v in p99 if v == v and v > 0]
    if p99s and max(p99s) >= 10 * min(p99s):
        right.set(ylabel="p99 latency (ms, log scale)", yscale="log")
        right.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        right.yaxis.set_minor_formatter(NullFormatter())
    levels = sorted({c for points in series.values() for c, _, _ in points})
    for ax in (left, right):
        ax.set_xlabel("concurrency (clients in a closed loop)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])  # the measured levels: 1, 8, 32, not 2^0, 2^3, 2^5
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylim(bottom=0)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="config")
    if any(len(p[1]) > 1 for pts in series.values() for p in pts):
        fig.suptitle("median of the rounds; error bars from the lowest to the highest round")
    return fig
