"""The benchmark's arithmetic and its engine-only mode (no timing is asserted)."""
from __future__ import annotations

import math
import time

from tessera.clients.bench import engine_only
from tessera.clients.bench_report import bar_ratios, percentile, plot, ratio_table, server_split, summarize


def test_percentiles_interpolate():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([5], 0.99) == 5
    assert math.isnan(percentile([], 0.5))


def test_summary_counts_images_and_errors_by_code():
    samples = [{"code": "OK", "latency_s": 0.1 * i, "first_event_s": 0.01, "images": 2, "candidates": 4}
               for i in range(1, 5)] + [{"code": "RESOURCE_EXHAUSTED", "latency_s": 0.0, "first_event_s": None,
                                         "images": 0, "candidates": 0, "details": "at capacity"}]
    s = summarize(samples, wall_s=2.0)
    assert s["images_per_s"] == 4.0 and s["requests_per_s"] == 2.0
    assert s["errors"] == {"RESOURCE_EXHAUSTED": 1}
    assert s["error_examples"]["RESOURCE_EXHAUSTED"] == "at capacity"
    assert abs(s["latency_ms"]["p50"] - 250) < 1e-9


def test_server_split_is_the_difference_over_the_run():
    before = {("tessera_op_batch_rows_sum", "sample"): 10, ("tessera_op_batch_rows_count", "sample"): 5}
    after = {("tessera_op_batch_rows_sum", "sample"): 110, ("tessera_op_batch_rows_count", "sample"): 10,
             ("tessera_op_compute_seconds_sum", "sample"): 1.5,
             ("tessera_op_device_wait_seconds_sum", "sample"): 0.5}
    split = server_split(before, after)
    assert split["sample"]["mean_rows_per_batch"] == 20.0
    assert split["sample"]["mean_compute_ms"] == 200.0   # the device wait is taken out...
    assert split["sample"]["mean_device_wait_ms"] == 100.0  # ...and shown apart


def test_engine_only_mode_answers_every_request(tmp_path):
    rows = engine_only([1, 8], requests=200)
    assert [r["summary"]["ok"] for r in rows] == [200, 200]
    plot({"engine": [(1, 1.0, 2.0), (8, 3.0, 4.0)]}, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0


def test_offline_mode_measures_the_in_process_pipeline(tiny_model_dir):
    from tessera.clients.bench import offline_run, shapes_prompts
    rows = offline_run(shapes_prompts(4), [1, 8], 3, {"num_candidates": 2}, str(tiny_model_dir), 8)
    assert [r["concurrency"] for r in rows] == [1, 8]
    s = rows[0]["summary"]
    assert s["images_per_s"] > 0 and s["latency_ms"]["p50"] > 0


def _row(config, images_per_s=1.0, p50=100.0, p99=200.0, **where):
    return {"config": config, **where,
            "summary": {"images_per_s": images_per_s, "latency_ms": {"p50": p50, "p99": p99}}}


def test_bar_ratios_pair_the_configs_of_one_round():
    rows = [_row("serial", 1.0, concurrency=1), _row("serial", 1.25, concurrency=32),
            _row("default", 2.0, p50=110, concurrency=1), _row("default", 15.0, concurrency=32),
            _row("default", 16.0, concurrency=64),  # serial did not run c=64: not a speed-up point
            _row("offline", 20.0, p50=100, concurrency=1), _row("offline", 20.0, p50=100, concurrency=32),
            _row("static", p50=1000, p99=2000, rate=8.0), _row("default", p50=600, p99=1000, rate=8.0)]
    r = bar_ratios(rows)
    assert r == {"speedup_c32": 12.0, "saturation": 0.8, "c1_latency": 1.1, "open_p50": 0.6, "open_p99": 0.5}
    assert bar_ratios([_row("default", concurrency=1)]) == {}  # nothing to pair with
    lines = ratio_table([{"saturation": 0.8}, {"saturation": 0.9}, {"saturation": 1.0}]).splitlines()
    assert lines == ["saturation      0.800  0.900  1.000   median 0.900"]


def test_rounds_repeat_the_comparison_and_keep_each_rounds_rows_apart(tiny_model_dir, tmp_path):
    import json
    from tessera.clients.bench import main
    assert main(["--compare", "offline", "--concurrency", "1", "--requests", "2", "--num-candidates", "2",
                 "--rounds", "2", "--model-dir", str(tiny_model_dir), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["config"], r["round"]) for r in report["rows"]] == [("offline", 0), ("offline", 1)]
    assert report["ratios"] == [{}, {}]  # offline alone pairs with nothing
    assert (tmp_path / "bench.png").stat().st_size > 0


async def test_closed_and_open_loops_count_every_request_they_send(tiny_model_dir):
    from tessera.clients.bench import closed_loop, open_loop
    from tests.server.rpc.conftest import app_config, serving
    params = {"num_candidates": 2, "num_images": 1}
    async with serving(app_config(tiny_model_dir)) as (server, _):
        target = f"127.0.0.1:{server.port}"
        samples, wall = await closed_loop(target, ["a red circle"], 2, 5, params)
        assert [s["code"] for s in samples] == ["OK"] * 5 and wall > 0
        samples, _ = await open_loop(target, ["a red circle"], 40.0, 6, params, bursty=True)
        assert [s["code"] for s in samples] == ["OK"] * 6  # a request count: exactly that many
        start = time.monotonic()
        samples, _ = await open_loop(target, ["a blue square"], 40.0, 0, params, bursty=False, duration=0.5)
        assert time.monotonic() - start >= 0.5
        assert samples and all(s["code"] == "OK" for s in samples)  # a duration: all it sent, answered
