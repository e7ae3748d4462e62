"""graph.device_turns: thread workers that share a device compute one call at a time."""
from __future__ import annotations

import asyncio

import pytest

from tessera.server.engine import ConfigError, GraphConfig
from tests.server.engine.helpers import T, running
from tests.server.engine import toy_ops
from tests.server.engine.toy_ops import Busy


def fan_out(turns: bool, right_device: str = "cpu") -> GraphConfig:
    """request -> left and right in parallel (each sleeping per call) -> join."""
    return GraphConfig.from_dict({
        "output": "join", "device_turns": turns,
        "ops": {
            "left": {"type": T + "Busy", "inputs": ["request"], "concurrency": 2},
            "right": {"type": T + "Busy", "inputs": ["request"], "devices": [right_device]},
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
    waits = await _run(fan_out(turns=True))
    assert Busy.most == 1
    assert waits == 8  # every call waited for its turn, and the wait was measured


async def test_without_turns_workers_on_one_device_overlap():
    waits = await _run(fan_out(turns=False))
    assert Busy.most >= 2
    assert not waits


async def test_workers_on_different_devices_do_not_wait_for_each_other():
    await _run(fan_out(turns=True, right_device="cuda:0"))
    assert Busy.most == 2  # left's two workers share cpu's turn; right runs beside them


def test_device_turns_must_be_a_boolean():
    with pytest.raises(ConfigError, match="^device_turns: must be true or false"):
        GraphConfig.from_dict({"output": "e", "device_turns": "yes",
                               "ops": {"e": {"type": T + "Echo", "inputs": ["request"]}}})


async def test_a_stepping_op_yields_the_device_to_a_waiting_call_between_steps(monkeypatch):
    """A multi-step call would hold the device thread; a queued call gets it after one step."""
    monkeypatch.setattr(toy_ops.Counter, "joins_mid_run", False)  # waiting rows don't cut the run
    config = GraphConfig.from_dict({
        "output": "join",
        "ops": {
            "count": {"type": T + "Counter", "inputs": ["request"], "batch_size": 4,
                      "settings": {"sleep": 0.01}},
            "busy": {"type": T + "Busy", "inputs": ["request"], "settings": {"sleep": 0.001}},
            "join": {"type": T + "Echo", "inputs": ["count", "busy"]},
        },
    })
    async with running(config) as engine:
        first = engine.submit(40)           # 40 steps of 10 ms on the cpu thread
        await asyncio.sleep(0.1)            # busy's call for it is done; the stepper runs on
        before = engine.metrics.registry.get_sample_value("tessera_op_device_wait_seconds_sum", {"op": "busy"})
        second = engine.submit(3)           # its busy call queues behind the stepper
        await asyncio.gather(first.result(), second.result())
        after = engine.metrics.registry.get_sample_value("tessera_op_device_wait_seconds_sum", {"op": "busy"})
    assert after - before < 0.06  # a step or two, not the rest of a 16-step run (up to 160 ms)


async def test_an_op_that_uses_no_device_keeps_its_own_thread():
    """OffDevice declares uses_device = False: it runs beside the device's turn, unmeasured."""
    config = GraphConfig.from_dict({
        "output": "join",
        "ops": {
            "left": {"type": T + "Busy", "inputs": ["request"]},
            "right": {"type": T + "OffDevice", "inputs": ["request"]},
            "join": {"type": T + "Join", "inputs": ["left", "right"]},
        },
    })
    async with running(config) as engine:
        results = await asyncio.gather(*(engine.submit(i).result() for i in range(8)))
        waits = engine.metrics.registry.get_sample_value(
            "tessera_op_device_wait_seconds_count", {"op": "right"})
        assert engine.stages["right"].workers[0].shared is None
        assert engine.stages["left"].workers[0].shared is engine.device_thread("cpu")
    assert [r.value for r in results] == [2 * i for i in range(8)]
    assert Busy.most == 2  # the two ran at once
    assert not waits
