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

# name -> environment for the child; os.cpu_count() threads is torch's default.
THREADINGS = {
    "omp1": {"OMP_NUM_THREADS": "1"},
    "omp-all": {"OMP_NUM_THREADS": str(os.cpu_count() or 1)},
    "omp-all-passive": {"OMP_NUM_THREADS": str(os.cpu_count() or 1), "OMP_WAIT_POLICY": "PASSIVE"},
}


def ceiling_run(prompts: list[str], levels: list[int], requests: int, params: dict, model_dir: str | None,
                capacity: int, device: str, settings: dict, threadings: list[str]) -> list[dict]:
    """One offline run per threading, each in its own process; the best of each figure."""
    runs = {}
    for name in threadings:
        job = {"prompts": prompts, "levels": levels[:1] or [1], "requests": requests, "params": params,
               "model_dir": model_dir, "capacity": capacity, "device": device, "settings": settings}
        env = {**os.environ, **THREADINGS[name]}
        proc = subprocess.run([sys.executable, "-m", "tessera.bench.ceiling"], input=json.dumps(job),
                              capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode:
            raise RuntimeError(f"ceiling {name}: {proc.stderr.strip()[-2000:]}")
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]
    fastest = max(runs, key=lambda n: runs[n]["images_per_s"])
    quickest = min(runs, key=lambda n: runs[n]["latency_ms"]["p50"])
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


def _child() -> None:
    from tessera.bench.run import offline_run
    job = json.loads(sys.stdin.read())
    rows = offline_run(job["prompts"], job["levels"], job["requests"], job["params"], job["model_dir"],
                       job["capacity"], job["device"], job["settings"])
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
