"""Summaries of a benchmark run: percentiles, server-side metrics, the table and the plot."""
from __future__ import annotations

import math
import statistics
import urllib.request
from collections import Counter

from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


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
    offline's single-request p50; open_p50 and open_p99: default / static in the open loop.
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
    if "default" in opened and "static" in opened:
        for q in ("p50", "p99"):
            out[f"open_{q}"] = opened["default"]["latency_ms"][q] / opened["static"]["latency_ms"][q]
    return out


def ratio_table(per_round: list[dict[str, float]]) -> str:
    """One line per ratio: each round's value, then the median."""
    names = [k for k in per_round[0]] if per_round else []
    lines = []
    for k in names:
        values = [r[k] for r in per_round if k in r]
        lines.append(f"{k:<14} " + " ".join(f"{v:6.3f}" for v in values) + f"   median {statistics.median(values):.3f}")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = f"{'config':<9} {'mode':<12} {'img/s':>7} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} " \
           f"{'max ms':>8} {'1st ev ms':>9} {'errors':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r["summary"]
        lat = s["latency_ms"]
        name = r["config"] + (f"/{r['round'] + 1}" if "round" in r else "")
        lines.append(f"{name:<9} {r['mode']:<12} {s['images_per_s']:>7.2f} {s['requests_per_s']:>7.2f} "
                     f"{lat['p50']:>8.1f} {lat['p90']:>8.1f} {lat['p99']:>8.1f} {lat['max']:>8.1f} "
                     f"{s['first_progress_ms_p50']:>9.0f} {sum(s['errors'].values()):>8}")
    return "\n".join(lines)


_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def plot(series: dict[str, list[tuple[int, float, float]]], path: str) -> None:
    """Two panels against concurrency (log2): images/s and p99 latency; a line per config."""
    W, H, M = 900, 380, 60
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    xs = sorted({c for pts in series.values() for c, _, _ in pts})
    if not xs:
        img.save(path)
        return
    panels = [("images/s", 1), ("p99 latency (ms)", 2)]
    pw = (W - 3 * M) // 2
    for p, (title, idx) in enumerate(panels):
        x0 = M + p * (pw + M)
        y0, y1 = 30, H - M
        top = max((pt[idx] for pts in series.values() for pt in pts if not math.isnan(pt[idx])), default=0) * 1.1
        top = top or 1.0
        draw.rectangle((x0, y0, x0 + pw, y1), outline="black")
        draw.text((x0 + pw // 2 - 40, 8), title, fill="black")
        for frac in (0, .25, .5, .75, 1):
            y = y1 - frac * (y1 - y0)
            draw.line((x0 - 4, y, x0, y), fill="black")
            draw.text((x0 - 55, y - 6), f"{top * frac:.1f}", fill="black")

        def px(c, v):
            lx = math.log2(c) if len(xs) > 1 else 0
            span = math.log2(xs[-1]) - math.log2(xs[0]) or 1
            return x0 + (lx - math.log2(xs[0])) / span * pw, y1 - v / top * (y1 - y0)
        for c in xs:
            x, _ = px(c, 0)
            draw.text((x - 6, y1 + 6), str(c), fill="black")
        draw.text((x0 + pw // 2 - 30, y1 + 24), "concurrency", fill="black")
        for k, (name, pts) in enumerate(series.items()):
            color = _COLORS[k % len(_COLORS)]
            coords = [px(c, v[idx - 1]) for c, *v in pts if not math.isnan(v[idx - 1])]
            if len(coords) > 1:
                draw.line(coords, fill=color, width=2)
            for x, y in coords:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
            if p == 0:
                draw.text((x0 + 8, y0 + 6 + 14 * k), name, fill=color)
    img.save(path)
