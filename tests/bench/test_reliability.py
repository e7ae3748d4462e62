"""The reliability suite's short version: every check against `tessera serve` children.

The long version is `tessera reliability` (README, Reliability). Here the counts are
small: RSS growth between two soaks of a few dozen calls is noise (allocator arenas,
first-use caches), so CI reports it and bounds it loosely; the long run holds it to 5%.
"""
from __future__ import annotations

import json

import pytest

from tessera.bench.reliability import run_suite
from tessera.server.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("models", [1, 2])  # 2: the model served twice, as m0 and m1, an engine each
def test_soak_burst_sigterm_fuzz_and_auth_all_hold(tiny_model_dir, models):
    lines: list[str] = []
    checks = run_suite(str(tiny_model_dir), calls=80, concurrency=12, fuzz_examples=80, burst_calls=24,
                       rss_growth=0.5, seed=1, models=models, report=lines.append)
    assert [c.name for c in checks] == ["soak", "soak", "fuzz", "burst", "sigterm", "auth"]
    problems = {c.name + str(i): c.problems for i, c in enumerate(checks) if c.problems}
    assert problems == {}, "\n".join(lines)
    soak = checks[0]
    assert {"cancel", "deadline", "invalid", "unary", "stream"} <= set(soak.facts["by_kind"])
    assert sum(soak.counted.values()) == 80 and soak.facts["inflight_after"] == 0
    assert checks[3].codes.get("RESOURCE_EXHAUSTED", 0) > 0 and checks[4].facts["exit_code"] == 0
    if models > 1:
        assert set(soak.facts["by_model"]) == {"m0", "m1"} and set(soak.facts["by_kind"]["unknown"]) == {"NOT_FOUND"}


@pytest.mark.slow
def test_the_documented_command_writes_every_count_as_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "runs" / "reliability.json"
    code = main(["reliability", "--model-dir", str(tiny_model_dir), "--calls", "6", "--concurrency", "3",
                 "--fuzz", "4", "--burst", "8", "--rss-growth", "10", "--out", str(out)])
    assert code == 0, capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["args"]["calls"] == 6 and written["args"]["models"] == 1
    assert [c["name"] for c in written["checks"]] == ["soak", "soak", "fuzz", "burst", "sigterm", "auth"]
