"""Stepping OPs: iteration-level batching, progress, eviction."""
from __future__ import annotations

import asyncio

import pytest

from tessera.server.engine import Cancelled, InvalidInput
from tests.server.engine.helpers import chain, running
from tests.server.engine.toy_ops import calls, pace, until


def counter(**extra):
    return chain(("count", "Counter", {"batch_size": 4, **extra}))


async def test_new_rows_join_mid_run_and_finished_rows_leave_at_once():
    steps = pace("count")
    async with running(counter(settings={"pace": "count"})) as engine:
        long = engine.submit(30)
        steps.allow(3)
        await steps.taken_at_least(3)  # the long row is a few steps in, the fourth waits
        short = engine.submit(3)
        await until(lambda: "count" in short.stages, "the short row reaches the sampler's queue")
        steps.free()
        short_result = await short.result()
        assert not long.done  # the short row finished while the long one still runs
        long_result = await long.result()
    assert short_result.value["admitted_at"] > 0  # joined the running batch mid-run
    assert short_result.value["finished_at"] == short_result.value["admitted_at"] + 3
    assert long_result.value == {"admitted_at": 0, "finished_at": 30}
    running_sizes = [len(b) for b in calls("count").batches]
    assert max(running_sizes) == 2 and running_sizes[-1] == 1


async def test_running_batch_never_exceeds_capacity():
    async with running(counter()) as engine:
        results = await asyncio.gather(*(engine.submit(5).result() for _ in range(10)))
    assert len(results) == 10
    assert max(len(b) for b in calls("count").batches) == 4


async def test_cancelled_row_leaves_the_running_batch():
    steps = pace("count")
    async with running(counter(settings={"pace": "count"})) as engine:
        doomed = engine.submit(1000)
        steps.allow(5)
        await steps.taken_at_least(5)  # the sixth step waits
        doomed.cancel()
        with pytest.raises(Cancelled):
            await doomed.result()
        steps_at_cancel = len(calls("count").batches)
        steps.free()
        later = await engine.submit(2).result()  # has passed every step the doomed row could see
        key = (doomed.id, 0)
        after = [b for b in calls("count").batches[steps_at_cancel + 1:] if key in b]
        assert after == []  # evicted by the next step at the latest
        # Idle after that: no steps for no rows; then the later request's two steps.
        assert len(calls("count").batches) <= steps_at_cancel + 1 + 2
        assert later.value["finished_at"] - later.value["admitted_at"] == 2


async def test_progress_events_count_steps():
    config = chain(("count", "Counter", {"batch_size": 4}), progress_interval_ms=0)
    async with running(config) as engine:
        request = engine.submit(4, events=True)
        events = [e async for e in request.stream()]
    progress, result = events[:-1], events[-1]
    assert [p.completed for p in progress] == [1, 2, 3, 4]
    assert all(p.total == 4 and p.stage == "count" for p in progress)
    assert result.value["finished_at"] == 4


async def test_progress_is_throttled_to_the_interval_but_keeps_first_and_last():
    config = chain(("count", "Counter", {"batch_size": 4}), progress_interval_ms=60_000)
    async with running(config) as engine:
        request = engine.submit(20, events=True)
        events = [e async for e in request.stream()]
    assert [e.completed for e in events[:-1]] == [1, 20]  # within one interval: first and last only
    assert events[-1].value["finished_at"] == 20


async def test_row_refused_at_admission_fails_alone():
    async with running(counter()) as engine:
        good, bad = engine.submit(3), engine.submit("invalid")
        with pytest.raises(InvalidInput):
            await bad.result()
        assert (await good.result()).value["finished_at"] >= 3


async def test_static_batching_runs_a_batch_to_completion_before_new_rows_join(monkeypatch):
    from tests.server.engine.toy_ops import Counter
    monkeypatch.setattr(Counter, "joins_mid_run", False)
    steps = pace("count")
    async with running(counter(settings={"pace": "count"})) as engine:
        first = engine.submit(10)
        steps.allow(2)
        await steps.taken_at_least(2)
        late = engine.submit(2)
        await until(lambda: "count" in late.stages, "the late row reaches the sampler's queue")
        steps.free()
        a, b = await first.result(), await late.result()
    assert a.value["finished_at"] == 10
    assert b.value["admitted_at"] >= 10  # waited for the running batch to drain


async def test_worker_runs_several_steps_per_call_when_nothing_needs_the_loop(monkeypatch):
    from tessera.server.engine.stepping import MAX_STEPS_PER_CALL
    from tessera.server.engine.workers import ThreadWorker
    calls_made = []
    original = ThreadWorker.step

    async def counting(self, call):
        calls_made.append(self.name)
        return await original(self, call)

    monkeypatch.setattr(ThreadWorker, "step", counting)
    async with running(counter()) as engine:
        result = await engine.submit(40).result()
    assert result.value["finished_at"] == 40
    steps_calls = calls_made.count("count")
    assert steps_calls <= -(-40 // MAX_STEPS_PER_CALL) + 1  # not one hand-off per step
    assert engine.metrics.registry.get_sample_value(
        "tessera_op_batch_rows_count", {"op": "count"}) == 40  # the metrics still count steps


async def test_several_workers_split_the_rows_evenly():
    """Two workers of batch 8 and eight rows: each runs four, not one worker eight while the
    other idles (the first to wake would otherwise take every queued row)."""
    steps = pace("count")
    config = chain(("count", "CounterByWorker", {"batch_size": 8, "concurrency": 2,
                                                 "settings": {"pace": "count"}}), device_turns=False)
    async with running(config) as engine:
        requests = [engine.submit(5) for _ in range(8)]
        steps.free()
        results = await asyncio.gather(*(r.result() for r in requests))
    assert len(results) == 8
    most: dict[int, int] = {}
    for worker, held in calls("count/by-worker").batches:
        most[worker] = max(most.get(worker, 0), held)
    assert sorted(most.values()) == [4, 4]


async def test_a_small_load_runs_on_the_first_worker_while_the_second_waits():
    """Three rows against two workers of batch 8: all three on one worker; the other, woken by
    each arrival, finds nothing that is its share and waits (it must not spin the loop)."""
    steps = pace("count")
    config = chain(("count", "CounterByWorker", {"batch_size": 8, "concurrency": 2,
                                                 "settings": {"pace": "count"}}), device_turns=False)
    async with running(config) as engine:
        first = engine.submit(3)
        steps.allow(1)
        await steps.taken_at_least(1)
        later = [engine.submit(3), engine.submit(3)]
        steps.free()
        await asyncio.gather(*(r.result() for r in [first, *later]))
    workers = {worker for worker, _ in calls("count/by-worker").batches}
    assert len(workers) == 1


async def test_with_device_turns_the_second_worker_steps_beside_the_turn():
    """Past half a batch the second worker steps on a thread of its own while the first holds
    the device's turn: both wait inside a step at once, which one shared thread cannot do."""
    steps = pace("count")
    config = chain(("count", "CounterByWorker", {"batch_size": 8, "concurrency": 2,
                                                 "settings": {"pace": "count"}}), device_turns=True)
    async with running(config) as engine:
        requests = [engine.submit(3) for _ in range(8)]
        await until(lambda: steps.waiting == 2, "both workers inside a step at once")
        steps.free()
        results = await asyncio.gather(*(r.result() for r in requests))
        first, second = engine.stages["count"].workers
        assert first.shared is engine.platforms.device_thread("cpu") and second.shared is None
        assert first.spec.compute.team and not second.spec.compute.team  # one OpenMP team beside the turn's: none
    assert len(results) == 8
    assert len({worker for worker, _ in calls("count/by-worker").batches}) == 2
