"""The bench's honest ceiling and its contention option.

`ceiling`: the offline pipeline (the same OPs, in process, at the sampler's full batch)
run once per threading setting, each in a fresh process so that OpenMP reads its
environment before torch starts; the best throughput and the best single-request latency
are kept, each with the setting that gave it. `offline` is one of these settings (the
bench's own process, torch's default threads), so a ratio against `ceiling` is never
flattered by a slow ceiling.

`CpuHog`: contention for a run, bounded: N child processes that each spin on one core,
ended when the run ends and, failing that, by their own deadline.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# name -> environment for the child; os.cpu_count() threads is torch's default.
THREADINGS = {
    "omp1": {"OMP_NUM_THREADS": "1"},
    "omp-all": {"OMP_NUM_THREADS": str(os.cpu_count() or 1)},
    "omp-all-passive": {"OMP_NUM_THREADS": str(os.cpu_count() or 1), "OMP_WAIT_POLICY": "PASSIVE"},
    "omp1-split": {"OMP_NUM_THREADS": "1"},
}
# Run as one child per core side by side, each on one thread with its share of the requests,
# started together; images/s is all their images over the span from the first start to the
# last end. Its single-request latency is measured beside the other children's work, so it
# is reported but never chosen as the ceiling's.
SPLIT = {"omp1-split"}


def ceiling_run(prompts: list[str], levels: list[int], requests: int, params: dict, model_dir: str | None,
                capacity: int, device: str, settings: dict, threadings: list[str]) -> list[dict]:
    """One offline run per threading, each in its own process; the best of each figure."""
    runs = {}
    for name in threadings:
        job = {"prompts": prompts, "levels": levels[:1] or [1], "requests": requests, "params": params,
               "model_dir": model_dir, "capacity": capacity, "device": device, "settings": settings}
        env = {**os.environ, **THREADINGS[name]}
        runs[name] = _split_run(name, job, env) if name in SPLIT else _children(name, [job], env)[0]
    fastest = max(runs, key=lambda n: runs[n]["images_per_s"])
    quickest = min((n for n in runs if n not in SPLIT), key=lambda n: runs[n]["latency_ms"]["p50"],
                   default=fastest)
    rows = []
    for c in levels:
        summary = dict(runs[fastest])
        summary["latency_ms"] = runs[quickest]["latency_ms"]
        summary["note"] = (f"best of threadings {', '.join(threadings)}: throughput with {fastest}, "
                           f"single-request latency with {quickest}")
        summary["threadings"] = {n: {"images_per_s": s["images_per_s"], "p50_ms": s["latency_ms"]["p50"]}
                                 for n, s in runs.items()}
        rows.append({"config": "ceiling", "mode": f"closed c={c}", "concurrency": c, "summary": summary})
    return rows


def _children(name: str, jobs: list[dict], env: dict) -> list[dict]:
    """Run one child per job at the same time; their summaries, in order."""
    procs = [subprocess.Popen([sys.executable, "-m", "tessera.bench.ceiling"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in jobs]
    # Each child is fed and drained on a thread of its own: children on a start line wait
    # for each other, so feeding them one after another would never start the first.
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            outs = list(pool.map(lambda pj: pj[0].communicate(json.dumps(pj[1]), timeout=1800), zip(procs, jobs)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (_, err) in zip(procs, outs):
        if proc.returncode:
            raise RuntimeError(f"ceiling {name}: {err.strip()[-2000:]}")
    return [json.loads(out.strip().splitlines()[-1])["summary"] for out, _ in outs]


def _split_run(name: str, job: dict, env: dict) -> dict:
    """One child per core, each on one thread with its share of the requests, timed together."""
    n = max(1, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as start_line:
        jobs = [{**job, "requests": max(1, job["requests"] // n), "start_line": [start_line, i, n]}
                for i in range(n)]
        parts = _children(name, jobs, env)
    span = max(p["window"][1] for p in parts) - min(p["window"][0] for p in parts)

    def over_span(rate: str) -> float:  # all the children's count over the joint span
        return sum(p[rate] * (p["window"][1] - p["window"][0]) for p in parts) / span
    summary = dict(parts[0])
    summary.update(images_per_s=over_span("images_per_s"), requests_per_s=over_span("requests_per_s"),
                   note=f"{n} processes side by side, one thread each; latency measured beside the others' work")
    return summary


def _wait_at(start_line: list) -> None:
    """Mark this child ready, then wait until every child is (files in a shared folder)."""
    folder, index, count = start_line
    Path(folder, f"ready-{index}").touch()
    give_up = time.monotonic() + 600
    while len(list(Path(folder).glob("ready-*"))) < count:
        if time.monotonic() > give_up:
            raise RuntimeError(f"ceiling child {index}: the other children were not ready within 600 s")
        time.sleep(0.005)


def _child() -> None:
    from tessera.bench.run import offline_run
    job = json.loads(sys.stdin.read())
    ready = (lambda: _wait_at(job["start_line"])) if job.get("start_line") else None
    rows = offline_run(job["prompts"], job["levels"], job["requests"], job["params"], job["model_dir"],
                       job["capacity"], job["device"], job["settings"], ready=ready)
    print(json.dumps(rows[0]))


_SPIN = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    sum(range(1000))\n"


class CpuHog:
    """`n` processes each keeping one core busy, for at most `limit_s` seconds."""

    def __init__(self, n: int, limit_s: float = 3600):
        self.n, self.limit_s = n, limit_s
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> CpuHog:
        self.procs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(limit=self.limit_s)])
                      for _ in range(self.n)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()
        self.procs = []


if __name__ == "__main__":
    _child()
