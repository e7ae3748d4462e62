"""The stepping scheduler as a plain object: no event loop, no threads, no model.

Workers are plain names; the waiting rows a list; a call's reply is written by hand."""
from __future__ import annotations

from dataclasses import dataclass, field

from tessera.server.engine.op import StepResult
from tessera.server.engine.stage import RowTask
from tessera.server.engine.stepping import MAX_STEPS_PER_CALL, StepScheduler
from tessera.server.engine.workers import StepReply


@dataclass(eq=False)
class Req:
    id: str
    done: bool = False
    events: None = None
    stages: dict = field(default_factory=dict)


class Waiting:
    """The rows waiting for a worker, oldest first (what the stage's queue gives)."""

    def __init__(self, tasks=()):
        self.rows = list(tasks)

    def __len__(self):
        return len(self.rows)

    def take(self, limit):
        taken, self.rows = self.rows[:max(0, limit)], self.rows[max(0, limit):]
        return [t for t in taken if not t.request.done]


def rows(n: int, start: int = 0) -> list[RowTask]:
    return [RowTask(Req(f"r{i}"), 0, i, 0.0) for i in range(start, start + n)]


def finished(*tasks: RowTask, out="image") -> StepReply:
    return StepReply(result=StepResult(finished={t.key: out for t in tasks}), steps=1)


def test_admits_up_to_the_batch_size_and_the_rest_wait():
    s, waiting = StepScheduler(4), Waiting(rows(6))
    plan = s.schedule("w0", waiting, ["w0"], now=0.0)
    assert [r.value for r in plan.call.admit] == [0, 1, 2, 3] and plan.call.evict == []
    assert plan.call.budget == MAX_STEPS_PER_CALL and not plan.may_join  # full: nothing can join
    assert len(waiting) == 2 and s.held("w0") == 4


def test_a_finished_row_leaves_and_a_waiting_row_joins_the_running_batch():
    s, waiting = StepScheduler(4), Waiting(rows(5))
    first = s.schedule("w0", waiting, ["w0"], now=0.0)
    outcome = s.update("w0", finished(first.admitted[1]))
    assert outcome.finished == [(first.admitted[1], "image")] and not outcome.failed
    plan = s.schedule("w0", waiting, ["w0"], now=0.0)
    assert [r.value for r in plan.call.admit] == [4] and s.held("w0") == 4


def test_static_batching_admits_only_into_an_empty_batch():
    s, waiting = StepScheduler(4, joins=False), Waiting(rows(5))
    first = s.schedule("w0", waiting, ["w0"], now=0.0)
    s.update("w0", finished(first.admitted[0]))
    assert s.schedule("w0", waiting, ["w0"], now=0.0).call.admit == []  # three still run
    s.update("w0", finished(*first.admitted[1:]))
    assert [r.value for r in s.schedule("w0", waiting, ["w0"], now=0.0).call.admit] == [4]


def test_rows_are_shared_evenly_across_workers():
    s, waiting = StepScheduler(8), Waiting(rows(8))
    a = s.schedule("w0", waiting, ["w0", "w1"], now=0.0)
    b = s.schedule("w1", waiting, ["w0", "w1"], now=0.0)
    assert (len(a.admitted), len(b.admitted)) == (4, 4)


def test_room_takes_an_even_share_of_rows_held_and_queued():
    s = StepScheduler(64)
    assert s.room("w0", 10, 100, ["w0"]) == 54                  # one worker: what fits
    assert s.room("w0", 0, 128, ["w0", "w1"]) == 64
    s._batches["w1"] = _held(56)
    assert s.room("w0", 0, 40, ["w0", "w1"]) == 48              # (0 + 40 + 56) / 2
    s._batches["w0"] = _held(40)
    assert s.room("w1", 40, 8, ["w0", "w1"]) == 4               # (40 + 8 + 40) / 2 = 44


def test_a_small_load_stays_on_the_first_worker():
    """Up to half a batch in all, the first worker takes every row and the others none."""
    s = StepScheduler(64)
    assert s.room("w0", 0, 4, ["w0", "w1"]) == 32
    assert s.room("w1", 0, 4, ["w0", "w1"]) == 0
    s._batches["w0"] = _held(28)
    assert s.room("w1", 0, 4, ["w0", "w1"]) == 0                # 32 in all: still small
    assert s.room("w1", 0, 8, ["w0", "w1"]) == 18               # 36 in all: an even share


def test_a_lost_worker_has_no_share():
    s = StepScheduler(64)
    assert s.room("w0", 0, 100, ["w0"]) == 64                   # w1 lost: not among the live
    assert s.room("w1", 0, 4, ["w1"]) == 64                     # w0 lost: w1 is the first live one


def test_a_cancelled_row_is_evicted_on_the_next_call():
    s, waiting = StepScheduler(4), Waiting(rows(2))
    first = s.schedule("w0", waiting, ["w0"], now=0.0)
    assert s.holding(first.admitted[0].request) == ["w0"]      # the driver stops that call early
    s.update("w0", StepReply(steps=1))
    first.admitted[0].request.done = True
    plan = s.schedule("w0", waiting, ["w0"], now=0.0)
    assert plan.call.evict == [first.admitted[0].key] and plan.call.admit == []
    assert s.held("w0") == 1


def test_a_call_that_may_take_more_rows_is_stopped_for_them():
    s = StepScheduler(4)
    s.schedule("w0", Waiting(rows(1)), ["w0"], now=0.0)
    s.schedule("w1", Waiting(rows(4, 1)), ["w1"], now=0.0)
    assert s.may_take_rows() == ["w0"]                          # w1 is full


def test_a_failed_step_fails_only_the_row_at_fault():
    """The running batch is re-run in halves, each alone on a worker, until the row at
    fault fails by itself; its batch-mates run again from their seeds and live."""
    s, waiting = StepScheduler(4), Waiting(rows(4))
    bad = s.schedule("w0", waiting, ["w0"], now=0.0).admitted[2]
    error = RuntimeError("step broke")
    outcome = s.update("w0", StepReply(error=error))
    assert outcome.retrying and not outcome.failed and s.idle("w0")
    failed, done = [], []
    while s.suspects:
        late = Waiting(rows(1, 10))
        plan = s.schedule("w0", late, ["w0"], now=0.0)
        assert len(late) == 1  # nothing joins a group that runs alone
        if bad in plan.admitted:
            outcome = s.update("w0", StepReply(error=error))
        else:
            outcome = s.update("w0", finished(*plan.admitted))
        failed += outcome.failed
        done += [t for t, _ in outcome.finished]
    assert failed == [(bad, error)]
    assert sorted(t.value for t in done) == [0, 1, 3]


def test_a_failing_row_is_tried_again_with_retry():
    s = StepScheduler(4, retry=1)
    task = s.schedule("w0", Waiting(rows(1)), ["w0"], now=0.0).admitted[0]
    assert s.update("w0", StepReply(error=RuntimeError("x"))).retrying
    assert s.schedule("w0", Waiting(), ["w0"], now=0.0).admitted == [task] and task.attempts == 1
    assert [t for t, _ in s.update("w0", StepReply(error=RuntimeError("x"))).failed] == [task]


def test_refused_rows_fail_alone():
    s = StepScheduler(4)
    plan = s.schedule("w0", Waiting(rows(3)), ["w0"], now=0.0)
    refused = plan.admitted[1]
    outcome = s.update("w0", StepReply(refused={refused.key: ValueError("no")}))
    assert [t for t, _ in outcome.failed] == [refused] and s.held("w0") == 2


def test_a_worker_lost_mid_step_gives_its_rows_back_whole():
    s, waiting = StepScheduler(4), Waiting(rows(3))
    plan = s.schedule("w0", waiting, ["w0"], now=0.0)
    assert s.lost("w0") == plan.admitted                        # for the front of the queue
    assert s.idle("w0") and s.may_take_rows() == [] and not s.suspects


def test_a_call_past_its_timeout_reruns_its_rows_in_smaller_groups():
    s = StepScheduler(4)
    s.schedule("w0", Waiting(rows(2)), ["w0"], now=0.0)
    outcome = s.call_failed("w0", TimeoutError())
    assert outcome.retrying and [len(g) for g in s.suspects] == [1, 1]


def test_nothing_to_do_is_no_call():
    assert StepScheduler(4).schedule("w0", Waiting(), ["w0"], now=0.0) is None
    s = StepScheduler(64)
    assert s.schedule("w1", Waiting(rows(4)), ["w0", "w1"], now=0.0) is None  # w0's share


def _held(n: int):
    from tessera.server.engine.stepping import _Batch
    return _Batch({("h", i): None for i in range(n)})
