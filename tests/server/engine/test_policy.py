"""The waiting order as plain objects: the policy's ranks, the starvation guard and preemption
on the pure StepScheduler, with a virtual clock. No event loop, no threads, no model."""
from __future__ import annotations

import pytest

from tessera.server.engine import InvalidInput
from tessera.server.engine.op import StepResult
from tessera.server.engine.policy import Ordered, Policy
from tessera.server.engine.stage import RowTask
from tessera.server.engine.stepping import StepScheduler
from tessera.server.engine.workers import StepReply
from tests.server.engine.test_scheduler import Req


class Waiting:
    """The stage's queue as the scheduler sees it: rows by rank (the policy's order)."""

    def __init__(self):
        self.rows: Ordered[RowTask] = Ordered()

    def __len__(self):
        return len(self.rows)

    @property
    def first_rank(self):
        return self.rows.peek_rank()

    def add(self, tasks):
        for task in tasks:
            self.rows.push(task, task.rank)

    def take(self, limit):
        return [self.rows.pop() for _ in range(min(limit, len(self.rows)))]


def row(policy: Policy, name: str, priority: int, now: float, steps: int = 1) -> RowTask:
    task = RowTask(Req(name), 0, steps, now, rank=policy.rank(priority, now))
    task.request.priority = priority
    return task


def test_lower_priority_goes_sooner_ties_by_arrival_and_fcfs_ignores_priority():
    policy, queue = Policy(), Ordered()
    for name, priority, arrival in (("late-urgent", -5, 2.0), ("old-default", 0, 0.0), ("new-default", 0, 1.0),
                                    ("batch", 5, 0.5)):
        queue.push(name, policy.rank(priority, arrival))
    assert [queue.pop() for _ in range(4)] == ["late-urgent", "old-default", "new-default", "batch"]
    fcfs, queue = Policy(kind="fcfs"), Ordered()
    for name, priority, arrival in (("b", -5, 2.0), ("a", 5, 1.0)):
        queue.push(name, fcfs.rank(priority, arrival))
    assert [queue.pop(), queue.pop()] == ["a", "b"]


def test_a_priority_outside_the_range_is_invalid_input():
    policy = Policy(lowest=-2, highest=3)
    policy.check(-2), policy.check(3)
    with pytest.raises(InvalidInput, match="between -2 .* and 3, got 4") as err:
        policy.check(4)
    assert err.value.fields == ("priority",)


def test_under_overload_the_least_urgent_are_refused_first():
    policy = Policy(lowest=-10, highest=10, overload_reserve=0.5)
    full = 100
    admitted = {p: max(n for n in range(full + 1) if policy.admits(p, n - 1, full)) for p in (-10, 0, 5, 10)}
    assert admitted == {-10: 100, 0: 100, 5: 75, 10: 50}  # in flight when the next one is refused
    assert Policy(kind="fcfs").admits(10, 99, 100)


def _serve(policy: Policy, *, ticks: int, batch: int = 2, backlog: int = 4, per_tick: int = 2,
           preempt: bool = False) -> tuple[float | None, float | None]:
    """Sustained priority-0 traffic (`per_tick` rows a tick, as many as the batch finishes a
    tick: the sampler stays saturated) and one priority-5 row at t=0. Each call runs one step;
    a row needs one step. When (virtual seconds) the priority-5 row was admitted, finished."""
    s, waiting = StepScheduler(batch, preempt=preempt), Waiting()
    waiting.add([row(policy, f"p0-{i}", 0, 0.0) for i in range(backlog)])
    low = row(policy, "p5", 5, 0.0)
    waiting.add([low])
    admitted = finished = None
    for tick in range(ticks):
        now = float(tick)
        waiting.add([row(policy, f"p0-{tick}-{i}", 0, now) for i in range(per_tick)])
        plan = s.schedule("w0", waiting, ["w0"], now=now)
        if low in plan.admitted and admitted is None:
            admitted = now
        done = s.running("w0")
        s.update("w0", StepReply(result=StepResult(finished={t.key: "image" for t in done}), steps=1))
        if low in done:
            finished = now + 1
            break
    return admitted, finished


def test_under_sustained_urgent_traffic_a_low_priority_row_finishes_within_the_starvation_bound():
    policy = Policy(lowest=-10, highest=10, starvation_s=20.0)  # a level is worth 1 s of waiting
    admitted, finished = _serve(policy, ticks=200)
    assert finished is not None and finished <= policy.starvation_s
    # Only rows admitted less than (5 - 0) levels after it overtook it: it went in at once after them.
    assert admitted == pytest.approx(5 * policy.level_s, abs=3)
    # Without the guard (aging too slow to matter) the same traffic starves it.
    assert _serve(Policy(lowest=-10, highest=10, starvation_s=1e9), ticks=200) == (None, None)


def test_a_priority_0_row_waits_at_most_one_admission_behind_priority_5_saturation():
    policy = Policy()
    s, waiting = StepScheduler(2), Waiting()
    waiting.add([row(policy, f"p5-{i}", 5, 0.0) for i in range(6)])
    first = s.schedule("w0", waiting, ["w0"], now=0.0)  # the batch fills with priority-5 rows
    assert [t.request.id for t in first.admitted] == ["p5-0", "p5-1"]
    urgent = row(policy, "p0", 0, 0.5)
    waiting.add([urgent])
    s.update("w0", StepReply(result=StepResult(finished={first.admitted[0].key: "image"}), steps=1))
    nxt = s.schedule("w0", waiting, ["w0"], now=1.0)
    assert nxt.admitted == [urgent]  # the next place that frees is its


def test_preemption_only_when_configured_evicts_the_least_urgent_and_requeues_it():
    policy = Policy(preempt=True)
    for preempt in (False, True):
        s, waiting = StepScheduler(2, preempt=preempt), Waiting()
        waiting.add([row(policy, "p5-old", 5, 0.0), row(policy, "p5-new", 5, 0.1)])
        s.schedule("w0", waiting, ["w0"], now=0.0)
        s.update("w0", StepReply(steps=1))  # both still running
        urgent = row(policy, "p0", 0, 0.2)
        waiting.add([urgent])
        plan = s.schedule("w0", waiting, ["w0"], now=0.3)
        if not preempt:
            assert plan.call.evict == [] and plan.admitted == [] and len(waiting) == 1
            continue
        [out] = plan.preempted
        assert out.request.id == "p5-new" and plan.call.evict == [out.key] and plan.admitted == [urgent]
        assert plan.may_join  # a full batch that may preempt stops for each arrival
        assert len(waiting) == 1 and waiting.rows.peek() is out  # it waits again, to restart from its seed
        s.update("w0", StepReply(result=StepResult(finished={urgent.key: "image"}), steps=1))
        again = s.schedule("w0", waiting, ["w0"], now=0.4)
        assert again.admitted == [out] and again.call.admit[0].value == out.value
