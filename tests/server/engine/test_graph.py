"""Fan-out, fan-in, workers, devices, process mode, timings and metrics."""
from __future__ import annotations

import asyncio
import os

from tessera.server.engine import GraphConfig
from tests.server.engine.helpers import T, running
from tests.server.engine.toy_ops import calls


def diamond() -> GraphConfig:
    return GraphConfig.from_dict({
        "output": "join",
        "ops": {
            "src": {"type": T + "AddOne", "inputs": ["request"]},
            "left": {"type": T + "Double", "inputs": ["src"], "batch_size": 4, "batch_timeout_ms": 5},
            "right": {"type": T + "AddOne", "inputs": ["src"]},
            "join": {"type": T + "Join", "inputs": ["left", "right"], "batch_size": 8, "batch_timeout_ms": 5},
        },
    })


async def test_fan_out_and_fan_in_join_per_request():
    async with running(diamond()) as engine:
        results = await asyncio.gather(*(engine.submit(i).result() for i in range(50)))
    # src: i+1; left: 2(i+1); right: i+2; join: their sum
    assert [r.value for r in results] == [2 * (i + 1) + (i + 2) for i in range(50)]
    assert len(calls("join").rows) == 50


def named_diamond(left: str, right: str) -> GraphConfig:
    """Difference takes (minuend, subtrahend) by its own names, whatever its feeders are called."""
    return GraphConfig.from_dict({
        "output": "diff",
        "ops": {
            "src": {"type": T + "AddOne", "inputs": ["request"]},
            left: {"type": T + "Double", "inputs": ["src"]},
            right: {"type": T + "AddOne", "inputs": ["src"]},
            "diff": {"type": T + "Difference", "inputs": {"minuend": left, "subtrahend": right},
                     "batch_size": 8, "batch_timeout_ms": 5},
        },
    })


async def test_fan_in_receives_inputs_by_its_declared_names_whatever_the_feeders_are_called():
    for left, right in (("double", "add"), ("twice", "plus_one")):
        async with running(named_diamond(left, right)) as engine:
            results = await asyncio.gather(*(engine.submit(i).result() for i in range(10)))
        # minuend 2(i+1) - subtrahend (i+2) = i
        assert [r.value for r in results] == list(range(10))


async def test_result_carries_timing_per_stage():
    async with running(diamond()) as engine:
        result = await engine.submit(1).result()
    assert {t.stage for t in result.timings} == {"src", "left", "right", "join"}
    assert all(t.queue_ms >= 0 and t.compute_ms >= 0 for t in result.timings)
    assert result.total_ms >= max(t.queue_ms + t.compute_ms for t in result.timings)


async def test_workers_are_spread_over_devices_round_robin():
    cfg = GraphConfig.from_dict({"output": "e", "ops": {"e": {
        "type": T + "Echo", "inputs": ["request"], "concurrency": 3, "devices": ["cpu", "cuda:0"]}}})
    async with running(cfg):
        pass
    assert sorted(calls("e").devices) == ["cpu", "cpu", "cuda:0"]


async def test_process_mode_worker_runs_in_another_process():
    cfg = GraphConfig.from_dict({"output": "p", "ops": {"p": {
        "type": T + "Pid", "inputs": ["request"], "mode": "process", "batch_size": 4}}})
    async with running(cfg) as engine:
        results = await asyncio.gather(*(engine.submit(i).result() for i in range(6)))
    pids = {r.value for r in results}
    assert len(pids) == 1 and os.getpid() not in pids


async def test_metrics_count_outcomes_batches_and_depth():
    async with running(diamond()) as engine:
        await asyncio.gather(*(engine.submit(i).result() for i in range(10)))
        reg = engine.metrics.registry
        assert reg.get_sample_value("tessera_engine_requests_total", {"outcome": "ok"}) == 10
        assert reg.get_sample_value("tessera_request_latency_seconds_count") == 10
        assert reg.get_sample_value("tessera_op_batch_rows_sum", {"op": "join"}) == 10
        assert reg.get_sample_value("tessera_op_compute_seconds_count", {"op": "left"}) >= 1
        assert reg.get_sample_value("tessera_op_queue_seconds_count", {"op": "right"}) == 10
        assert reg.get_sample_value("tessera_channel_depth", {"op": "src"}) == 0
        assert reg.get_sample_value("tessera_inflight_requests") == 0
