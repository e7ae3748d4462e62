"""graph.device_turns: thread workers that share a device compute one call at a time."""
from __future__ import annotations

import asyncio

import pytest

from tessera.server.engine import ConfigError, GraphConfig
from tests.server.engine.helpers import T, running
from tests.server.engine import toy_ops
from tests.server.engine.toy_ops import Busy, calls, pace, until


def fan_out(turns: bool, right_device: str = "cpu", meet: bool = False) -> GraphConfig:
    """request -> left and right in parallel -> join.

    meet: each side's calls wait until a call of the other side's has started, which only
    happens when the two can compute at the same time (it would wait forever for a turn)."""
    return GraphConfig.from_dict({
        "output": "join", "device_turns": turns,
        "ops": {
            "left": {"type": T + "Busy", "inputs": ["request"], "concurrency": 2,
                     "settings": {"open": "left ran", "wait_for": "right ran"} if meet else {}},
            "right": {"type": T + "Busy", "inputs": ["request"], "devices": [right_device],
                      "settings": {"open": "right ran", "wait_for": "left ran"} if meet else {}},
            "join": {"type": T + "Join", "inputs": ["left", "right"]},
        },
    })


@pytest.fixture(autouse=True)
def _fresh_busy():
    Busy.active = Busy.most = 0


async def _run(config: GraphConfig, n: int = 8):
    async with running(config) as engine:
        results = await asyncio.gather(*(engine.submit(i).result() for i in range(n)))
        waits = engine.metrics.registry.get_sample_value(
            "tessera_op_device_wait_seconds_count", {"op": "right"})
    assert [r.value for r in results] == [2 * i for i in range(n)]  # nothing lost or mixed
    return waits


async def test_workers_on_one_device_take_turns():
    config = fan_out(turns=True)
    waits = await _run(config)
    assert Busy.most == 1
    assert waits == 8  # every call waited for its turn, and the wait was measured


async def test_workers_on_one_device_share_its_one_compute_thread():
    async with running(fan_out(turns=True)) as engine:
        threads = {w.shared for name in ("left", "right") for w in engine.stages[name].workers}
        assert threads == {engine.platforms.device_thread("cpu")}


async def test_without_turns_workers_on_one_device_overlap():
    waits = await _run(fan_out(turns=False, meet=True))
    assert Busy.most >= 2  # the first calls of left and right ran at the same time
    assert not waits


async def test_workers_on_different_devices_do_not_wait_for_each_other():
    await _run(fan_out(turns=True, right_device="cuda:0", meet=True))
    assert Busy.most == 2  # left's two workers share cpu's turn; right runs beside them


def test_device_turns_must_be_a_boolean():
    with pytest.raises(ConfigError, match="^device_turns: must be true or false"):
        GraphConfig.from_dict({"output": "e", "device_turns": "yes",
                               "ops": {"e": {"type": T + "Echo", "inputs": ["request"]}}})


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
async def test_a_stepping_op_yields_the_device_to_a_waiting_call_between_steps(monkeypatch, device):
    """A multi-step call would hold the device thread; a queued call gets it after one step.
    The platform says so (DeviceHost.keep_stepping), on a CPU and on a GPU alike (the toy OPs
    compute nothing, so cuda:0 runs here without one)."""
    monkeypatch.setattr(toy_ops.Counter, "joins_mid_run", False)  # waiting rows don't cut the run
    config = GraphConfig.from_dict({
        "output": "join",
        "ops": {
            "count": {"type": T + "Counter", "inputs": ["request"], "batch_size": 4,
                      "devices": [device], "settings": {"pace": "count"}},
            "busy": {"type": T + "Busy", "inputs": ["request"], "devices": [device]},
            "join": {"type": T + "Echo", "inputs": ["count", "busy"]},
        },
    })
    steps = pace("count")
    async with running(config) as engine:
        before = toy_ops.STEPS              # Counter steps of earlier tests, in this process
        first = engine.submit(40)           # 40 steps on the cpu thread
        steps.allow(3)
        await until(lambda: len(calls("busy").rows) == 1, "busy's call for the first request")
        await steps.taken_at_least(3)       # the stepper is inside a multi-step call, held at step 4
        second = engine.submit(3)           # its busy call queues behind the stepper
        stepper = engine.stages["count"].workers[0]
        await until(lambda: stepper.compute.waiting > 0, "busy's call waits for the device")
        steps.free()
        await asyncio.gather(first.result(), second.result())
    ran_at = [at for at, _ in calls("busy").rows]
    assert ran_at[1] - before <= 4  # after the step it was held in, not the rest of a 16-step run


async def test_an_op_that_uses_no_device_keeps_its_own_thread():
    """OffDevice declares uses_device = False: it runs beside the device's turn, unmeasured."""
    config = GraphConfig.from_dict({
        "output": "join",
        "ops": {
            "left": {"type": T + "Busy", "inputs": ["request"],
                     "settings": {"open": "left ran", "wait_for": "right ran"}},
            "right": {"type": T + "OffDevice", "inputs": ["request"],
                      "settings": {"open": "right ran", "wait_for": "left ran"}},
            "join": {"type": T + "Join", "inputs": ["left", "right"]},
        },
    })
    async with running(config) as engine:
        results = await asyncio.gather(*(engine.submit(i).result() for i in range(8)))
        waits = engine.metrics.registry.get_sample_value(
            "tessera_op_device_wait_seconds_count", {"op": "right"})
        assert engine.stages["right"].workers[0].shared is None
        assert engine.stages["left"].workers[0].shared is engine.platforms.device_thread("cpu")
    assert [r.value for r in results] == [2 * i for i in range(8)]
    assert Busy.most == 2  # the two ran at once
    assert not waits


async def test_without_turns_only_the_stepping_ops_first_worker_may_open_an_openmp_team():
    """Workers computing side by side each open their own OpenMP team if they may use more
    than one thread; with more teams than cores libgomp stops spinning for all of them."""
    config = GraphConfig.from_dict({
        "output": "tail", "device_turns": False,
        "ops": {
            "count": {"type": T + "Counter", "inputs": ["request"], "concurrency": 2},
            "tail": {"type": T + "Echo", "inputs": ["count"], "concurrency": 2},
        },
    })
    async with running(config) as engine:
        teams = {(name, w.spec.index): w.spec.compute.team for name in ("count", "tail")
                 for w in engine.stages[name].workers}
    assert teams == {("count", 0): True, ("count", 1): False, ("tail", 0): False, ("tail", 1): False}


async def test_with_turns_every_worker_may_use_every_core():
    async with running(fan_out(turns=True)) as engine:
        assert all(w.spec.compute.team for name in ("left", "right") for w in engine.stages[name].workers)
