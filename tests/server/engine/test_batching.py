"""Auto-batching: batches fill up to batch_size, partial ones leave at the timeout."""
from __future__ import annotations

import asyncio
import random

import pytest

from tessera.server.engine import EngineError
from tests.server.engine.helpers import chain, running
from tests.server.engine.toy_ops import STUCK_S, calls, gate, until

NEVER_MS = 60_000  # a batch timeout no test waits out: a batch that leaves did not wait for it


async def test_full_batches_leave_without_waiting_for_the_timeout():
    cfg = chain(("echo", "Echo", {"batch_size": 4, "batch_timeout_ms": NEVER_MS}))
    async with running(cfg) as engine:
        requests = [engine.submit(i) for i in range(8)]
        results = await asyncio.wait_for(asyncio.gather(*(r.result() for r in requests)), STUCK_S)
    assert [r.value for r in results] == list(range(8))
    assert sorted(len(b) for b in calls("echo").batches) == [4, 4]


async def test_partial_batch_waits_for_a_row_still_upstream():
    cfg = chain(("first", "Echo", {}), ("echo", "Echo", {"batch_size": 8, "batch_timeout_ms": NEVER_MS}))
    async with running(cfg) as engine:
        quick = [engine.submit({"i": i}) for i in range(3)]
        await until(lambda: all("echo" in r.stages for r in quick), "the quick rows reach echo")
        slow = engine.submit({"i": 3, "gate": "first"})  # held in `first`: echo may yet get its row
        await gate("first").reached()
        gate("first").open()
        results = await asyncio.wait_for(asyncio.gather(*(r.result() for r in [*quick, slow])), STUCK_S)
    assert [r.value["i"] for r in results] == [0, 1, 2, 3]
    assert [len(b) for b in calls("echo").batches] == [4]  # the quick rows waited for the slow one


async def test_partial_batch_leaves_at_the_timeout_while_a_row_is_still_upstream():
    # Each OP on its own thread: the held row must not hold echo's turn on the device.
    cfg = chain(("first", "Echo", {}), ("echo", "Echo", {"batch_size": 8, "batch_timeout_ms": 1}),
                device_turns=False)
    async with running(cfg) as engine:
        quick = [engine.submit({"i": i}) for i in range(3)]
        slow = engine.submit({"i": 3, "gate": "first"})
        results = await asyncio.gather(*(r.result() for r in quick))  # while `slow` is held
        assert not slow.done
        gate("first").open()
        await slow.result()
    assert [r.value["i"] for r in results] == [0, 1, 2]
    batches = calls("echo").batches  # the quick rows in one or more partial batches, then the slow one
    assert [r["i"] for b in batches[:-1] for r in b] == [0, 1, 2] and [r["i"] for r in batches[-1]] == [3]


async def test_partial_batch_does_not_wait_when_no_row_can_come():
    """Every request in flight has reached the OP: a fuller batch cannot form, so no wait."""
    cfg = chain(("echo", "Echo", {"batch_size": 8, "batch_timeout_ms": NEVER_MS}))
    async with running(cfg) as engine:
        results = await asyncio.wait_for(
            asyncio.gather(*(engine.submit(i).result() for i in range(3))), STUCK_S)
        assert all(stage.upcoming == 0 for stage in engine.stages.values())
    assert [r.value for r in results] == [0, 1, 2]
    assert [len(b) for b in calls("echo").batches] == [3]


async def test_rows_of_one_request_split_across_calls():
    cfg = chain(("fan", "Fanned", {"batch_size": 4, "batch_timeout_ms": 50}))
    async with running(cfg) as engine:
        result = await engine.submit({"n": 10, "x": 100}).result()
    assert result.value == [10 * (100 + i) for i in range(10)]
    assert sum(len(b) for b in calls("fan").batches) == 10
    assert max(len(b) for b in calls("fan").batches) <= 4


async def test_thousand_concurrent_requests_each_get_their_own_result():
    cfg = chain(("a", "AddOne", {"batch_size": 32, "batch_timeout_ms": 2, "concurrency": 2}),
                ("d", "Double", {"batch_size": 16, "batch_timeout_ms": 1, "concurrency": 3}),
                max_inflight=2000)
    for name in ("a", "d"):
        cfg.ops[name].channel_capacity = 2000
    rng = random.Random(7)
    # Staggered arrivals, so that they interleave with batches in flight: requests come in
    # waves of 1-50, and a wave is sent once some request of the one before it has finished.
    waves, start = [], 0
    while start < 1000:
        size = min(1 + rng.randrange(50), 1000 - start)
        waves.append(range(start, start + size))
        start += size
    finished = [asyncio.Event() for _ in waves]

    async def one(engine, wave, i):
        if wave:
            await finished[wave - 1].wait()
        result = await engine.submit(i, request_id=f"r{i}").result()
        finished[wave].set()
        return result

    async with running(cfg) as engine:
        results = await asyncio.gather(*(one(engine, w, i) for w, ids in enumerate(waves) for i in ids))
    assert [r.value for r in results] == [(i + 1) * 2 for i in range(1000)]
    assert [r.request_id for r in results] == [f"r{i}" for i in range(1000)]
    assert max(len(b) for b in calls("a").batches) > 1  # rows of many requests shared calls


async def test_batching_off_calls_the_same_op_one_row_at_a_time():
    cfg = chain(("echo", "Echo", {"batch_size": 1}))
    async with running(cfg) as engine:
        results = await asyncio.gather(*(engine.submit(i).result() for i in range(5)))
    assert sorted(r.value for r in results) == list(range(5))
    assert all(len(b) == 1 for b in calls("echo").batches)


async def test_requests_that_fail_or_expire_upstream_no_longer_count_as_coming():
    cfg = chain(("hold", "Echo", {}), ("check", "Raise", {}),
                ("echo", "Echo", {"batch_size": 8, "batch_timeout_ms": NEVER_MS}), device_turns=False)
    async with running(cfg) as engine:
        bad = engine.submit("bad")                            # fails in `check`, never reaches echo
        late = engine.submit({"gate": "hold"}, timeout_s=0.05)  # expires while held in `hold`
        good = engine.submit("fine")
        for r in (bad, late):
            with pytest.raises(EngineError):
                await r.result()
        gate("hold").open()
        assert (await good.result()).value == "ok:fine"
        assert [stage.upcoming for stage in engine.stages.values()] == [0, 0, 0]
