"""The bench's `ceiling` config and its contention option (no timing is asserted)."""
from __future__ import annotations

import os

from tessera.bench import shapes_prompts
from tessera.bench.ceiling import CpuHog, ceiling_run
from tessera.bench.report import bar_ratios


def test_ceiling_runs_each_threading_in_its_own_process_and_states_which_won(tiny_model_dir):
    rows = ceiling_run(shapes_prompts(4), [1, 32], 2, {"num_candidates": 2}, str(tiny_model_dir), 8, "cpu", {},
                       ["omp1", "omp-all"])
    assert [(r["config"], r["concurrency"]) for r in rows] == [("ceiling", 1), ("ceiling", 32)]
    s = rows[0]["summary"]
    assert set(s["threadings"]) == {"omp1", "omp-all"}
    best = max(t["images_per_s"] for t in s["threadings"].values())
    assert s["images_per_s"] == best and best > 0
    assert s["latency_ms"]["p50"] == min(t["p50_ms"] for t in s["threadings"].values())
    assert "throughput with omp" in s["note"] and "latency with omp" in s["note"]


def test_the_split_ceiling_runs_one_single_threaded_child_per_core_together(tiny_model_dir):
    """`omp1-split`: the cores' children, each with its share of the requests, timed from the
    first start to the last end; its latency (measured beside the other children) never wins."""
    rows = ceiling_run(shapes_prompts(4), [1], 4, {"num_candidates": 2}, str(tiny_model_dir), 8, "cpu", {},
                       ["omp1", "omp1-split"])
    s = rows[0]["summary"]
    assert set(s["threadings"]) == {"omp1", "omp1-split"} and s["threadings"]["omp1-split"]["images_per_s"] > 0
    assert s["latency_ms"]["p50"] == s["threadings"]["omp1"]["p50_ms"]
    assert "latency with omp1" in s["note"] and "latency with omp1-split" not in s["note"]


def test_ratios_against_the_ceiling():
    def row(config, c, img, p50):
        return {"config": config, "concurrency": c, "summary": {"images_per_s": img, "latency_ms": {"p50": p50}}}
    r = bar_ratios([row("default", 1, 3.0, 300.0), row("default", 32, 18.0, 2000.0),
                    row("ceiling", 1, 20.0, 250.0), row("ceiling", 32, 20.0, 250.0)])
    assert r["ceiling_c32"] == 0.9 and r["ceiling_c1"] == 1.2


def test_the_cpu_hog_keeps_its_processes_only_while_it_is_open():
    with CpuHog(2, limit_s=60) as hog:
        pids = [p.pid for p in hog.procs]
        assert len(pids) == 2 and all(p.poll() is None for p in hog.procs)
    for pid in pids:  # reaped: no such process any more
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"hog {pid} still running")
