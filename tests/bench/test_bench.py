"""The benchmark's arithmetic, its plot and its engine-only mode (no timing is asserted)."""
from __future__ import annotations

import math
import time

import pytest

from tessera.bench import engine_only
from tessera.bench.report import bar_ratios, figure, percentile, plot, ratio_table, server_split, summarize, table


def test_percentiles_interpolate():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([10, 20, 30, 40, 50], 0.9) == 46.0
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
    t = table(rows)
    assert [c.header for c in t.columns][:3] == ["config", "mode", "img/s"] and t.row_count == 2


def test_plot_labels_its_axes_logs_latency_and_spans_the_rounds(tmp_path):
    series = {"default": [(1, [3.0, 3.5, 4.0], [300.0, 280.0, 320.0]), (32, [15.0, 16.0, 17.0], [2000, 2100, 2500])],
              "serial": [(1, [1.2, 1.3, 1.4], [800.0, 850.0, 900.0]), (32, [1.2, 1.3, 1.25], [25000, 26000, 27000])]}
    fig = figure(series)
    thru, lat = fig.axes
    assert thru.get_xlabel().startswith("concurrency") and thru.get_ylabel() == "images/s"
    assert "p99 latency" in lat.get_ylabel() and lat.get_yscale() == "log" and thru.get_xscale() == "log"
    (legend,) = fig.legends  # one legend, outside both panels
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert all(box.x0 >= ax.get_window_extent().x1 for ax in fig.axes)
    assert [t.get_text() for t in legend.get_texts()] == ["default", "serial"]
    # the line goes through the medians; the error bar spans the lowest to the highest round
    line = lat.get_lines()[0]
    assert list(line.get_ydata()) == [300.0, 2100.0]
    segments = lat.collections[0].get_segments()
    assert [(s[0][1], s[1][1]) for s in segments] == [(280.0, 320.0), (2000.0, 2500.0)]
    plot(series, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # an offline bench run: about 45 s on 2 cores
def test_offline_mode_measures_the_in_process_pipeline(tiny_model_dir):
    from tessera.bench import offline_run, shapes_prompts
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


def test_bar_ratios_against_the_generic_server_at_each_concurrency_and_c1_latency():
    rows = [_row("default", 3.0, p50=250, concurrency=1), _row("default", 12.0, concurrency=8),
            _row("default", 18.0, concurrency=32), _row("default", 20.0, concurrency=64),
            _row("generic", 2.0, p50=125, concurrency=1), _row("generic", 10.0, concurrency=8),
            _row("generic", 24.0, concurrency=32)]
    assert bar_ratios(rows) == {"vs_generic_c1": 1.5, "vs_generic_c8": 1.2, "vs_generic_c32": 0.75,
                                "vs_generic_p50_c1": 2.0}
    lines = ratio_table([bar_ratios(rows)]).splitlines()  # the longest name sets the column
    assert lines[0] == "vs_generic_c1      1.500   median 1.500"


def test_an_unknown_configuration_is_one_line_listing_the_known_ones(capsys, tmp_path):
    from tessera.bench import main
    assert main(["--compare", "default,defualt", "--concurrency", "1", "--out", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no configuration defualt" in line
    assert all(name in line for name in ("default", "ray", "all-threads", "processes", "generic", "offline",
                                        "ceiling"))
    assert not (tmp_path / "bench.json").exists()


def test_rounds_repeat_the_comparison_and_keep_each_rounds_rows_apart(tiny_model_dir, tmp_path):
    import json
    from tessera.bench import main
    assert main(["--compare", "offline", "--concurrency", "1", "--requests", "2", "--num-candidates", "2",
                 "--rounds", "2", "--model-dir", str(tiny_model_dir), "--out", str(tmp_path), "--no-roofline"]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["config"], r["round"]) for r in report["rows"]] == [("offline", 0), ("offline", 1)]
    assert "roofline" not in report  # --no-roofline: no probe, no decode-step profile
    assert report["ratios"] == [{}, {}]  # offline alone pairs with nothing
    assert (tmp_path / "bench.png").stat().st_size > 0


async def test_closed_and_open_loops_count_every_request_they_send(tiny_model_dir):
    from tessera.bench import closed_loop, open_loop
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


def test_replot_redraws_the_png_from_a_saved_report_and_measures_nothing(tmp_path):
    import json
    from tessera.bench import main
    rows = [{"config": "default", "mode": f"closed c={c}", "concurrency": c, "round": r,
             "summary": {"images_per_s": c + r, "requests_per_s": c + r, "latency_ms": {"p99": 100.0 * c + r}}}
            for r in range(2) for c in (1, 8)]
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps({"rows": rows}))
    assert main(["--replot", str(saved), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["bench.png"]  # no bench.json: nothing was measured


def test_every_bench_configuration_is_a_server_configuration_with_settings_where_they_belong():
    from tessera.bench.servers import bench_configs
    from tessera.server.config import AppConfig
    configs = bench_configs(None, None, {"dtype": "float16"}, {"sample_on": "cpu"}, {"forward_mode": "padded"})
    for raw in configs.values():
        AppConfig.from_dict(raw)  # each OP's settings checked against its Settings dataclass
    ops = configs["default"]["graph"]["ops"]
    assert ops["sample"]["settings"] == {"dtype": "float16", "sample_on": "cpu"}
    assert all(ops[name]["settings"] == {"dtype": "float16", "forward_mode": "padded"}
               for name in ("decode", "clip_text", "rerank"))
    turns = configs["turns"]["graph"]  # the shape shipped before two sampler workers
    assert turns["device_turns"] is True and turns["ops"]["sample"]["concurrency"] == 1
    assert configs["default"]["graph"]["ops"]["sample"]["concurrency"] == 2
    assert not {"shared", "parallel", "wide", "replicas"} & configs.keys()  # measured, not adopted: docs only


def test_on_a_gpu_default_is_the_shape_its_figures_were_measured_in():
    """One sampler worker taking the device's turn: two workers on one GPU are unmeasured."""
    from tessera.bench.servers import bench_configs
    configs = bench_configs(None, "cuda:0")
    for name in ("default", "static", "serial"):
        graph = configs[name]["graph"]
        assert graph["device_turns"] is True and graph["ops"]["sample"].get("concurrency", 1) == 1
        assert graph["ops"]["sample"]["devices"] == ["cuda:0"]


def test_the_table_is_whole_when_stdout_is_not_a_terminal(tmp_path, capsys):
    from tessera.bench import main
    assert main(["--engine-only", "--concurrency", "1,8", "--requests", "100", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out  # captured: not a terminal, where rich would cut to 80 columns
    header = next(line for line in out.splitlines() if "config" in line)
    assert all(name in header for name in ("img/s", "p50 ms", "p99 ms", "max ms", "1st ev ms", "errors"))
    assert "…" not in out
    assert sum(line.split()[:1] == ["engine"] for line in out.splitlines()) == 2


def test_p99_over_a_narrow_range_is_linear_and_over_decades_log_with_plain_labels():
    narrow = {"default": [(1, [3.0], [900.0]), (8, [9.0], [1050.0]), (32, [12.0], [1180.0])]}
    wide = {"default": [(1, [3.0], [300.0]), (32, [15.0], [26000.0])]}
    for series, scale in ((narrow, "linear"), (wide, "log")):
        fig = figure(series)
        _, lat = fig.axes
        fig.canvas.draw()
        assert lat.get_yscale() == scale
        low, high = lat.get_ylim()
        labels = [t.get_text() for t in lat.get_yticklabels() if t.get_text() and low <= t.get_position()[1] <= high]
        assert len(labels) >= 3, labels  # enough numbers to read a point's value off the axis
        assert all("10^" not in t and "\\times" not in t for t in labels), labels  # 200, 500, 1,000: no 2×10²


def test_a_server_that_does_not_start_says_how_it_ended_and_what_it_printed(tmp_path):
    import pytest
    from tessera.bench.servers import ServerProcess, bench_configs
    config = bench_configs(str(tmp_path / "no-model"))["default"]  # `tessera serve` exits 2 at once
    with pytest.raises(RuntimeError) as failed:
        with ServerProcess("default", config):
            pass
    message = str(failed.value)
    assert message.startswith("server 'default' did not start: it exited with 2 before serving")
    assert "tessera serve: cannot load the model" in message and "no-model" in message


def test_a_bench_server_starts_a_ray_of_its_own_unless_told_to_join_one():
    from tessera.bench.servers import ServerProcess, bench_configs
    ray = bench_configs()["ray"]
    assert ServerProcess("ray", ray).environment()["RAY_ADDRESS"] == "local"  # not ray_current_cluster's
    joined = {**ray, "graph": {**ray["graph"], "ray_address": "10.0.0.1:6379"}}
    assert ServerProcess("ray", joined).environment().get("RAY_ADDRESS") != "local"
