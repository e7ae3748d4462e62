"""Cancellation, deadlines, errors without collateral, overload, shutdown."""
from __future__ import annotations

import asyncio

import pytest

from tessera.server.engine import Cancelled, DeadlineExceeded, InvalidInput, OpFailed, Overloaded, ShuttingDown
from tests.server.engine.helpers import chain, running
from tests.server.engine.toy_ops import calls, gate, until


async def test_cancelled_request_leaves_channels_and_costs_no_more_compute():
    # One worker, held on a first request; the second waits in line and is cancelled.
    cfg = chain(("slow", "Echo", {}), ("after", "Echo", {}))
    async with running(cfg) as engine:
        first = engine.submit({"gate": "slow", "id": 1})
        second = engine.submit({"gate": "slow", "id": 2})
        await gate("slow").reached()
        second.cancel()
        with pytest.raises(Cancelled):
            await second.result()
        gate("slow").open()
        assert (await first.result()).value["id"] == 1
    assert [r["id"] for r in calls("slow").rows] == [1]
    assert [r["id"] for r in calls("after").rows] == [1]


async def test_expired_request_fails_with_deadline_and_is_dropped():
    cfg = chain(("slow", "Echo", {}), ("after", "Echo", {}))
    async with running(cfg) as engine:
        request = engine.submit({"gate": "slow", "id": 1}, timeout_s=0.05)
        await gate("slow").reached()
        with pytest.raises(DeadlineExceeded):
            await request.result()
        gate("slow").open()
        # The next request through the same worker has passed the expired one's call.
        assert (await engine.submit({"id": 2}).result()).value["id"] == 2
    assert [r["id"] for r in calls("after").rows] == [2]  # no compute downstream after the deadline


async def test_default_deadline_applies():
    cfg = chain(("slow", "Echo", {}), default_deadline_ms=100)
    async with running(cfg) as engine:
        with pytest.raises(DeadlineExceeded, match="100 ms"):
            await engine.submit({"gate": "slow"}).result()


async def test_failing_item_leaves_batch_mates_intact():
    cfg = chain(("e", "Echo", {"batch_size": 8, "batch_timeout_ms": 50, "settings": {"fail_on": 3}}))
    async with running(cfg) as engine:
        requests = [engine.submit(i) for i in range(6)]
        outcomes = await asyncio.gather(*(r.result() for r in requests), return_exceptions=True)
    assert isinstance(outcomes[3], OpFailed) and "'e'" in str(outcomes[3])
    assert [o.value for i, o in enumerate(outcomes) if i != 3] == [0, 1, 2, 4, 5]


async def test_raising_batch_is_split_to_find_the_bad_row():
    cfg = chain(("r", "Raise", {"batch_size": 8, "batch_timeout_ms": 50}))
    async with running(cfg) as engine:
        values = ["a", "bad", "b", "invalid", "c"]
        outcomes = await asyncio.gather(*(engine.submit(v).result() for v in values), return_exceptions=True)
    assert [o.value for o in (outcomes[0], outcomes[2], outcomes[4])] == ["ok:a", "ok:b", "ok:c"]
    assert isinstance(outcomes[1], OpFailed) and "ValueError" in str(outcomes[1])
    assert isinstance(outcomes[3], InvalidInput)  # typed: reaches the caller as such


async def test_retry_reruns_a_failed_row():
    cfg = chain(("f", "Flaky", {"retry": 1}))
    async with running(cfg) as engine:
        assert (await engine.submit(5).result()).value == 5
    assert calls("f").rows == [5, 5]


async def test_without_retry_a_failed_row_fails():
    cfg = chain(("f", "Flaky", {"retry": 0}))
    async with running(cfg) as engine:
        with pytest.raises(OpFailed, match="transient"):
            await engine.submit(5).result()


async def test_op_timeout_fails_the_call():
    cfg = chain(("slow", "Echo", {"timeout_ms": 50}))
    async with running(cfg) as engine:
        with pytest.raises(OpFailed, match="timeout_ms=50"):
            await engine.submit({"gate": "slow"}).result()


async def test_overload_is_refused_at_once():
    cfg = chain(("slow", "Echo", {"channel_capacity": 2}))
    async with running(cfg) as engine:
        busy = engine.submit({"gate": "slow"})
        await gate("slow").reached()  # the worker holds it; the channel is empty again
        queued = [engine.submit({"i": i}) for i in range(2)]
        with pytest.raises(Overloaded, match="capacity"):
            engine.submit({"i": 99})
        gate("slow").open()
        for r in [busy, *queued]:
            await r.result()  # nothing admitted is lost
        assert engine.metrics.registry.get_sample_value(
            "tessera_engine_requests_total", {"outcome": "overloaded"}) == 1


async def test_max_inflight_bounds_admission():
    cfg = chain(("slow", "Echo", {}), max_inflight=1)
    async with running(cfg) as engine:
        first = engine.submit({"gate": "slow"})
        with pytest.raises(Overloaded):
            engine.submit({})
        gate("slow").open()
        await first.result()


async def test_shutdown_drains_in_flight_then_refuses():
    cfg = chain(("slow", "Echo", {"batch_size": 4, "batch_timeout_ms": 1}))
    async with running(cfg) as engine:
        requests = [engine.submit({"gate": "slow", "i": i}) for i in range(3)]
        await gate("slow").reached()
        stopping = asyncio.create_task(engine.stop(grace_s=30))
        await until(lambda: not engine.accepting, "the engine stops admitting")
        with pytest.raises(ShuttingDown):
            engine.submit({})
        gate("slow").open()
        await stopping
        assert [(await r.result()).value["i"] for r in requests] == [0, 1, 2]


async def test_shutdown_past_grace_fails_what_is_left():
    cfg = chain(("slow", "Echo", {}))
    engine_ctx = running(cfg)
    engine = await engine_ctx.__aenter__()
    request = engine.submit({"gate": "slow"})
    await gate("slow").reached()
    await engine.stop(grace_s=0.05)  # the request is held: the grace runs out
    with pytest.raises(ShuttingDown):
        await request.result()
