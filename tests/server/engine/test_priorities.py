"""Priorities through the engine: every waiting place orders by the policy, and the observer
seam says when each row joined the running batch."""
from __future__ import annotations

import asyncio

import pytest

from tessera.server.engine import Engine, InvalidInput, Overloaded
from tessera.server.engine.observe import Observer
from tests.server.engine.helpers import chain
from tests.server.engine.toy_ops import STUCK_S, pace, until


class Joins(Observer):
    """Which requests joined the running batch, call by call; the rows evicted; arrivals."""

    def __init__(self):
        self.groups: list[list[str]] = []
        self.evictions: list[tuple[str, ...]] = []
        self._queued: dict[str, asyncio.Event] = {}

    def joined(self, op, worker, tasks, start):
        self.groups.append([t.request.id for t in tasks])

    def evicted(self, op, worker, tasks, reason):
        self.evictions.append((reason, *[t.request.id for t in tasks]))

    def queued(self, op, request, state, rows):
        self._queued.setdefault(request.id, asyncio.Event()).set()

    async def reached(self, request_id: str) -> None:
        """Until the request's rows are in the stage's queue."""
        await asyncio.wait_for(self._queued.setdefault(request_id, asyncio.Event()).wait(), STUCK_S)


def counting(policy: str = "priority", **top):
    return chain(("count", "Counter", {"batch_size": 2, "settings": {"pace": "count"}}), policy=policy, **top)


async def saturated(engine: Engine, joins: Joins, steps, low: int = 5) -> list:
    """Six priority-`low` requests of 3 steps: two run (inside their first step), four wait."""
    waiting = [engine.submit(3, request_id=f"low-{i}", priority=low) for i in range(6)]
    await until(lambda: steps.waiting == 1, "the batch inside its first step")
    return waiting


@pytest.mark.parametrize("policy", ["priority", "fcfs"])
async def test_a_priority_0_request_joins_at_the_next_admission_under_priority_5_saturation(policy):
    joins, steps = Joins(), pace("count")
    engine = Engine(counting(policy), observers=[joins])
    await engine.start()
    try:
        waiting = await saturated(engine, joins, steps)
        urgent = engine.submit(3, request_id="urgent", priority=0)
        if policy == "priority":  # it passes the rows queued ahead of it at once (fcfs: after them)
            await joins.reached("urgent")
        steps.free()
        await asyncio.gather(urgent.result(), *(r.result() for r in waiting))
    finally:
        await engine.stop(5)
    assert joins.groups[0] == ["low-0", "low-1"]
    after = [g for g in joins.groups[1:]]
    if policy == "priority":
        assert "urgent" in after[0]  # the first place that freed after it came
    else:
        assert "urgent" in after[-1]  # first come: behind every request that came before it


async def test_with_preemption_a_priority_0_request_takes_a_running_rows_place_after_one_step():
    joins, steps = Joins(), pace("count")
    engine = Engine(counting(preempt=True), observers=[joins])
    await engine.start()
    try:
        waiting = await saturated(engine, joins, steps)
        urgent = engine.submit(3, request_id="urgent", priority=0)
        await joins.reached("urgent")
        steps.free()
        results = await asyncio.gather(urgent.result(), *(r.result() for r in waiting))
    finally:
        await engine.stop(5)
    assert joins.groups[1] == ["urgent"] and joins.evictions[0] == ("preempted", "low-1")
    assert results[0].value["admitted_at"] == 1  # one step after it came
    # The evicted request still ran all of its steps, from the start.
    finished = {r.request_id: r.value for r in results}
    assert finished["low-1"]["finished_at"] - finished["low-1"]["admitted_at"] == 3


async def test_out_of_range_priority_is_invalid_and_the_least_urgent_are_refused_first():
    engine = Engine(counting(max_inflight=4, overload_reserve=0.5, priority_range=[-3, 6]))
    await engine.start()
    try:
        with pytest.raises(InvalidInput, match="priority must be between -3"):
            engine.submit(1, priority=7)
        steps = pace("count")
        engine.submit(1, priority=0)
        engine.submit(1, priority=6)  # 1 in flight: the least urgent fits under 4 x (1 - 0.5)
        with pytest.raises(Overloaded):
            engine.submit(1, priority=6)  # 2 in flight: not any more
        engine.submit(1, priority=0), engine.submit(1, priority=0)  # the default fills max_inflight
        with pytest.raises(Overloaded):
            engine.submit(1, priority=0)
        steps.free()
    finally:
        await engine.stop(5)
    counted = {s.labels["outcome"]: s.value for m in engine.metrics.registry.collect()
               if m.name == "tessera_engine_requests" for s in m.samples if s.name.endswith("_total")}
    assert counted == {"invalid_input": 1, "overloaded": 2, "ok": 4}
