"""The stepping scheduler: iteration-level batching, decided on the event loop.

Two parts, as vLLM splits them:
- `StepScheduler` is plain bookkeeping, with no event loop, thread or model. Each of a
  stepping OP's workers owns a running batch. `schedule(worker, waiting, live, now)`
  decides the worker's next call (a `StepPlan`): which rows leave (their requests are
  done), which join from the waiting rows (up to batch_size, an even share across the
  workers; with static batching only into an empty batch), and how many steps it may run
  (`MAX_STEPS_PER_CALL`, or one while a stream is owed its first report).
  Waiting rows come in the order of their requests' ranks (policy.py); with
  `graph.preempt`, a full batch gives up its least urgent row for a more urgent waiting
  one (the evicted row waits again and restarts from its seed: the same image).
  `update(worker, reply)` reads the call's reply into a `StepOutcome` (rows finished, rows
  failed). A failed call's rows are re-run from their seeds in smaller groups, halves run
  alone on a worker, until the row at fault fails by itself (after `retry` more tries),
  as batch OPs bisect; `lost(worker)` hands a lost worker's rows back whole.
- `StepDriver` runs it: one loop per worker awaits rows, the call and its reply, and
  is the one place that asks a call to return after its current step (`stop_early`)
  for the loop's sake: a row could join, a request left, a progress report fell due.
  (A device's own reasons, another call queued for its turn or a thread count over its
  share, are the platform's: platforms/.) The worker itself returns when a row finishes,
  fails or carries a preview.

    scheduler = StepScheduler(batch_size=8, joins=True)
    plan = scheduler.schedule(worker, waiting, live=[worker], now=0.0)
    reply = run(plan.call)                     # the worker computes
    outcome = scheduler.update(worker, reply)  # outcome.finished, outcome.failed
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tessera.server.engine.observe import Call
from tessera.server.engine.op import StepRow
from tessera.server.engine.progress import ProgressReporter
from tessera.server.engine.workers import StepCall, StepReply, Worker, WorkerLost

if TYPE_CHECKING:
    from tessera.server.engine.request import Request
    from tessera.server.engine.stage import OpStage, RowTask

# A worker runs up to this many steps per call while nothing needs the event loop: one
# hand-off (one remote hop, for a Ray actor) per several steps.
MAX_STEPS_PER_CALL = 16


class Waiting(Protocol):
    """The rows waiting for a worker, first rank first (the stage's queue)."""

    def __len__(self) -> int: ...

    def take(self, limit: int) -> list[RowTask]: ...


class Preemptible(Waiting, Protocol):
    """A queue a preempting scheduler reads the next rank of and gives evicted rows back to."""

    @property
    def first_rank(self) -> tuple[float, float] | None: ...

    def add(self, tasks: list[RowTask]) -> None: ...


@dataclass
class StepPlan:
    """The scheduler's decision for one worker's next call."""
    call: StepCall                      # what crosses to the worker: rows to admit, keys to evict, budget
    admitted: list[RowTask]             # the rows behind call.admit, in order
    preempted: list[RowTask] = field(default_factory=list)  # evicted for more urgent rows, queued again
    left: list[RowTask] = field(default_factory=list)       # evicted because their requests ended
    due: float | None = None            # when a progress report falls due mid-call (stop then)
    may_join: bool = False              # a waiting row could join this call's batch (stop for it)


@dataclass
class StepOutcome:
    """What a reply (or a failed call) means for the rows."""
    finished: list[tuple[RowTask, Any]] = field(default_factory=list)
    failed: list[tuple[RowTask, BaseException]] = field(default_factory=list)
    retrying: bool = False              # rows wait to be re-run in smaller groups: wake a worker


@dataclass
class _Batch:
    live: dict[Hashable, RowTask] = field(default_factory=dict)  # the worker's running batch
    alone: bool = False                 # a suspect group runs alone: nothing joins it


class StepScheduler:
    def __init__(self, batch_size: int, *, joins: bool = True, retry: int = 0,
                 progress: ProgressReporter | None = None, max_steps: int = MAX_STEPS_PER_CALL,
                 preempt: bool = False):
        self.batch_size, self.joins, self.retry, self.max_steps = batch_size, joins, retry, max_steps
        self.preempt = preempt
        self.progress = progress or ProgressReporter("", 0.0)
        self.suspects: deque[list[RowTask]] = deque()   # groups to re-run alone, after a failure
        self._batches: dict[Hashable, _Batch] = {}      # each worker's running batch
        self._in_flight: dict[Hashable, StepPlan] = {}  # the calls running, per worker

    # -- reading the state -------------------------------------------------------------------
    def held(self, worker: Hashable) -> int:
        """Rows in `worker`'s running batch."""
        batch = self._batches.get(worker)
        return len(batch.live) if batch is not None else 0

    def running(self, worker: Hashable) -> list[RowTask]:
        """The rows of `worker`'s running batch."""
        batch = self._batches.get(worker)
        return list(batch.live.values()) if batch is not None else []

    def idle(self, worker: Hashable) -> bool:
        """Whether `worker` holds no rows (its next call needs rows from the queue or a retry)."""
        return self.held(worker) == 0

    def may_take_rows(self) -> list[Hashable]:
        """The workers whose call in flight a waiting row could join (ask them to return)."""
        return [w for w, plan in self._in_flight.items() if plan.may_join]

    def holding(self, request: Request) -> list[Hashable]:
        """The workers whose call in flight runs a row of `request` (it left: ask them to return)."""
        return [w for w in self._in_flight
                if any(t.request is request for t in self._batches[w].live.values())]

    # -- deciding ----------------------------------------------------------------------------
    def schedule(self, worker: Hashable, waiting: Waiting, live: Sequence[Hashable],
                 now: float) -> StepPlan | None:
        """`worker`'s next call, its new rows taken from `waiting`; `live` is the OP's live
        workers in order. None: nothing to do until something changes."""
        batch = self._batches.setdefault(worker, _Batch())
        admit: list[RowTask] = []
        if not batch.live:
            batch.alone = False
            while self.suspects and not admit:
                admit = [t for t in self.suspects.popleft() if not t.request.done]
                batch.alone = bool(admit)
        evict = [k for k, t in batch.live.items() if t.request.done]
        left = [batch.live.pop(key) for key in evict]
        preempted = self._preempt(batch, waiting) if self.preempt and not admit else []
        evict += [t.key for t in preempted]
        if not batch.alone and (self.joins or not batch.live):
            held = len(batch.live) + len(admit)
            limit = self.room(worker, held, len(waiting), live) if self.joins else self.batch_size - held
            admit += waiting.take(limit)
        for task in admit:
            batch.live[task.key] = task
        if not batch.live and not evict:
            return None
        due = self.progress.next_due(list(batch.live.values()))
        budget = 1 if due is not None and due <= now else self.max_steps
        rank = min(t.rank for t in batch.live.values()) if batch.live else None
        plan = StepPlan(StepCall([StepRow(t.key, t.value, t.trace) for t in admit], evict, budget, rank), admit,
                        preempted=preempted, left=left, due=due if budget > 1 else None,
                        may_join=self.joins and not batch.alone and (
                            len(batch.live) < self.batch_size or self.preempt))
        self._in_flight[worker] = plan
        return plan

    def _preempt(self, batch: _Batch, waiting: Waiting) -> list[RowTask]:
        """A full batch's least urgent row, when a waiting row outranks it: out of the batch
        and back in the queue (by its own rank), to restart from its seed later. One per call:
        the call returns early while rows wait (may_join), so several urgent rows get in over
        the next calls, each after one step."""
        first = getattr(waiting, "first_rank", None)
        if batch.alone or not self.joins or len(batch.live) < self.batch_size or first is None:
            return []
        worst = max(batch.live.values(), key=lambda t: t.rank)
        if not first < worst.rank:
            return []
        del batch.live[worst.key]
        waiting.add([worst])  # behind the more urgent row that takes its place now
        return [worst]

    def room(self, worker: Hashable, held: int, queued: int, live: Sequence[Hashable]) -> int:
        """How many queued rows this worker may take, holding `held`: up to batch_size, and
        with several workers an even share of the rows held and queued, so that one worker
        does not take every row while another idles (the others take the rest when they next
        come round: a queued row stops their calls early). Up to half a batch in all, the
        rows stay on the first live worker: split finer, two workers' steps cost more than
        they save (two thread workers stepping 2 rows each of one 4-row request took
        1.2-1.3x as long as one stepping all 4, and halves of 32 rows 0.88x as many
        images/s; docs/performance.md). Static batching takes what fits: its rows join no
        running batch, so a share left queued would wait."""
        room = self.batch_size - held
        if len(live) < 2 or worker not in live or room <= 0:
            return room
        total = held + queued + sum(self.held(w) for w in live if w is not worker)
        small = self.batch_size // 2
        if worker is live[0]:
            share = max(-(-total // len(live)), small)  # rounded up: every row has a worker
        elif total <= small:
            return 0
        else:
            share = -(-total // len(live))
        return min(room, max(0, share - held))

    # -- reading the reply -------------------------------------------------------------------
    def update(self, worker: Hashable, reply: StepReply) -> StepOutcome:
        """The call of `worker` returned `reply`: rows refused, finished or failed leave its batch."""
        self._in_flight.pop(worker, None)
        batch = self._batches.setdefault(worker, _Batch())
        outcome = StepOutcome()
        if reply.error is not None:  # admit or step raised: the worker dropped its running batch
            group = list(batch.live.values())
            batch.live.clear()
            self._failed(group, reply.error, outcome)
            return outcome
        for key, exc in reply.refused.items():
            task = batch.live.pop(key, None)
            if task is not None:
                outcome.failed.append((task, exc))
        self.progress.report(batch.live, reply.result)
        for key, out in reply.result.finished.items():
            task = batch.live.pop(key, None)
            if task is None or task.request.done:
                continue
            if isinstance(out, BaseException):
                outcome.failed.append((task, out))
            else:
                outcome.finished.append((task, out))
        return outcome

    def call_failed(self, worker: Hashable, exc: BaseException) -> StepOutcome:
        """The call itself failed (it ran past timeout_ms; the worker is being replaced): its
        rows are re-run in smaller groups, as when a step raised."""
        self._in_flight.pop(worker, None)
        batch = self._batches.pop(worker, _Batch())
        outcome = StepOutcome()
        self._failed(list(batch.live.values()), exc, outcome)
        return outcome

    def lost(self, worker: Hashable) -> list[RowTask]:
        """The worker is gone, mid-call or between calls: its rows, whole, for the queue
        (a lost worker is not the rows' fault; each restarts from its seed)."""
        self._in_flight.pop(worker, None)
        batch = self._batches.pop(worker, _Batch())
        return [t for t in batch.live.values() if not t.request.done]

    def _failed(self, group: list[RowTask], exc: BaseException, outcome: StepOutcome) -> None:
        """A call failed with these rows in its running batch: re-run them in halves, alone,
        from their seeds; a row that fails alone fails (or is tried again, with retry)."""
        group = [t for t in group if not t.request.done]
        if not group:
            return
        if len(group) == 1:
            task = group[0]
            if task.attempts < self.retry:
                task.attempts += 1
                self.suspects.appendleft(group)
            else:
                outcome.failed.append((task, exc))
                return
        else:
            half = len(group) // 2
            self.suspects.extendleft([group[half:], group[:half]])
        outcome.retrying = True


class StepDriver:
    """Runs a stage's StepScheduler on the event loop: one loop per worker."""

    def __init__(self, stage: OpStage):
        self.stage = stage
        cfg = stage.cfg
        progress = ProgressReporter(stage.name, stage.engine.config.progress_interval_ms / 1000)
        # The loop's own instance of the OP (settings, no model) says whether rows join mid-run.
        self.scheduler = StepScheduler(cfg.batch_size, joins=stage.front.joins_mid_run, retry=cfg.retry,
                                       progress=progress, preempt=stage.engine.policy.preempt)

    # -- what the stage tells the driver ---------------------------------------------------
    def rows_arrived(self) -> None:
        self._stop_early(self.scheduler.may_take_rows())

    def request_left(self, request: Request) -> None:
        self._stop_early(self.scheduler.holding(request))

    @staticmethod
    def _stop_early(workers: list[Worker]) -> None:
        """The one place the loop asks calls in flight to return after their current step."""
        for worker in workers:
            worker.stop_early()

    # -- one worker's loop -------------------------------------------------------------------
    async def run(self, worker: Worker) -> None:
        stage, scheduler = self.stage, self.scheduler
        while True:
            if scheduler.idle(worker):
                await stage.wait_for_work(worker, lambda: bool(scheduler.suspects))
                if not scheduler.suspects:
                    await stage.fill_or_timeout(worker, stage.cfg.batch_size)
            plan = scheduler.schedule(worker, stage.queue, stage.live_workers(), time.monotonic())
            if plan is None:  # the queued rows are another worker's share: wait for a change
                await stage.wait_rows(worker)
                continue
            start = time.monotonic()
            if plan.left:
                stage.tell.evicted(stage.name, worker, plan.left, "left")
            if plan.preempted:
                stage.tell.evicted(stage.name, worker, plan.preempted, "preempted")
            if plan.admitted:
                stage.mark_start(worker, plan.admitted, start, joined=True)
            running = scheduler.running(worker)
            timer = (asyncio.get_running_loop().call_later(max(0.0, plan.due - start), self._stop_early, [worker])
                     if plan.due is not None else None)
            try:
                reply = await stage.timed(worker, worker.step(plan.call))
            except WorkerLost:
                raise stage.lost_with(worker, scheduler.lost(worker)) from None
            except Exception as exc:  # noqa: BLE001 - timed out: the worker is being replaced
                await self._settle(scheduler.call_failed(worker, exc))
                raise stage.lost_with(worker, []) from None
            finally:
                if timer is not None:
                    timer.cancel()
            if reply.error is None and reply.steps:
                stage.tell.computed(Call(stage.name, worker, running, start, time.monotonic() - start,
                                         steps=reply.steps, threads=reply.threads, spans=reply.spans))
            await self._settle(scheduler.update(worker, reply))

    async def _settle(self, outcome: StepOutcome) -> None:
        stage = self.stage
        for task, exc in outcome.failed:
            stage.fail_row(task, exc)
        if outcome.retrying:
            stage.wake()
        for task, out in outcome.finished:
            if not task.request.done:
                await stage.row_done(task, out)
