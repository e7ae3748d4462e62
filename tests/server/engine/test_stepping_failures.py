"""A failing step re-runs its rows in smaller groups, from the start, so only the row at
fault fails; a call past timeout_ms does not keep its worker busy behind the retry."""
from __future__ import annotations

import asyncio

import pytest

from tessera.server.engine import OpFailed
from tests.server.engine.helpers import chain, running
from tests.server.engine.toy_ops import calls


async def test_a_failing_step_fails_only_the_row_at_fault():
    config = chain(("count", "Faulty", {"batch_size": 8, "batch_timeout_ms": 200,
                                        "settings": {"fail_on": 7, "fail_after": 2}}))
    async with running(config) as engine:
        values = [5, 6, 7, 8, 9, 10]
        requests = [engine.submit(v) for v in values]
        outcomes = await asyncio.gather(*(r.result() for r in requests), return_exceptions=True)
    bad_key = (requests[values.index(7)].id, 0)
    bad = outcomes[values.index(7)]
    assert isinstance(bad, OpFailed) and "step broke" in str(bad)
    for v, out in zip(values, outcomes):
        if v != 7:  # re-run from the start: every step of the row again
            assert out.value["finished_at"] - out.value["admitted_at"] == v
    failed = calls("count:failed").batches  # the running batch of each step that raised
    assert len(failed[0]) == len(values) and failed[-1] == [bad_key]  # halved down to the row alone
    assert [len(b) for b in failed] == sorted((len(b) for b in failed), reverse=True)


async def test_a_row_that_fails_alone_is_retried_with_retry():
    config = chain(("count", "Faulty", {"batch_size": 4, "retry": 1,
                                        "settings": {"fail_on": 3, "fail_after": 0}}))
    async with running(config) as engine:
        with pytest.raises(OpFailed, match="step broke"):
            await engine.submit(3).result()
        assert (await engine.submit(4).result()).value["finished_at"] >= 4  # the worker still serves


async def test_a_stepping_call_past_timeout_does_not_hold_its_worker():
    """The hung call is abandoned: the retry and later rows run on a fresh worker at once."""
    config = chain(("count", "Faulty", {"batch_size": 4, "timeout_ms": 300, "retry": 0,
                                        "settings": {"hang_on": 2}}))
    async with running(config, grace_s=1) as engine:
        stuck = engine.submit(2)
        with pytest.raises(OpFailed, match="timeout_ms=300"):
            await stuck.result()
        result = await asyncio.wait_for(engine.submit(3).result(), 10)  # not behind the hung call
        assert result.value["finished_at"] - result.value["admitted_at"] == 3
        registry = engine.metrics.registry
        assert registry.get_sample_value("tessera_op_worker_restarts_total", {"op": "count"}) == 1
        assert registry.get_sample_value("tessera_op_live_workers", {"op": "count"}) == 1


async def test_a_batch_call_past_timeout_is_retried_on_a_fresh_worker():
    config = chain(("echo", "Hang", {"timeout_ms": 300, "retry": 1, "settings": {"hang_on": "x"}}))
    async with running(config, grace_s=1) as engine:
        result = await asyncio.wait_for(engine.submit("x").result(), 10)
    assert result.value == "x"
    assert calls("echo").rows == ["x", "x"]
