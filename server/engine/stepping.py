"""The stepping scheduler: iteration-level batching, decided on the event loop.

Each of a stepping OP's workers owns a running batch. Before every call the scheduler
decides what the worker does: which rows leave (their requests are done), which join
(up to batch_size; with static batching only into an empty batch), and how many steps
it may run (`MAX_STEPS_PER_CALL`, or one while a stream is owed its first report). While
the call runs, the scheduler asks it to return after the current step (`stop_early`) when
something needs the loop: a row could join, a request left, a progress report fell due;
a thread worker is also told when another OP's call queues for its device. The worker
itself returns when a row finishes, fails or carries a preview.

A call that fails (admit or step raised, or it ran past timeout_ms) loses the running
batch: its rows are re-run from their seeds in smaller groups, halves run alone on a
worker, until the row at fault is found and fails by itself (after `retry` more tries),
as batch OPs bisect. A lost worker's rows go back to the queue whole.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from tessera.server.engine.op import StepRow
from tessera.server.engine.progress import ProgressReporter
from tessera.server.engine.workers import StepCall, Worker, WorkerLost

if TYPE_CHECKING:
    from tessera.server.engine.request import Request
    from tessera.server.engine.stage import OpStage, RowTask

# A worker runs up to this many steps per call while nothing needs the event loop: one
# hand-off (one remote hop, for a Ray actor) per several steps.
MAX_STEPS_PER_CALL = 16


class StepScheduler:
    def __init__(self, stage: OpStage):
        self.stage = stage
        self.progress = ProgressReporter(stage.name, stage.engine.config.progress_interval_ms / 1000)
        self.suspects: deque[list[RowTask]] = deque()   # groups to re-run alone, after a failure
        self._calls: dict[Worker, _Running] = {}         # the calls in flight, per worker
        self._held: dict[Worker, int] = {}               # rows in each worker's running batch

    # -- what the stage tells the scheduler --------------------------------------------------
    def rows_arrived(self) -> None:
        for worker, call in self._calls.items():
            if call.may_join:
                worker.stop_early()

    def request_left(self, request: Request) -> None:
        for worker, call in self._calls.items():
            if any(t.request is request for t in call.live.values()):
                worker.stop_early()

    # -- one worker's loop -------------------------------------------------------------------
    async def run(self, worker: Worker) -> None:
        stage, cfg = self.stage, self.stage.cfg
        joins = stage.front.joins_mid_run  # the loop's own instance of the OP: settings, no model
        live: dict[tuple, RowTask] = {}
        alone = False  # the running batch is a suspect group: nothing joins it
        while True:
            admit: list[RowTask] = []
            self._held[worker] = len(live)
            if not live:
                alone = False
                while not stage.pending and not self.suspects:
                    await stage.wait_rows(worker)
                if self.suspects:
                    admit, alone = [t for t in self.suspects.popleft() if not t.request.done], True
                    if not admit:
                        continue
                else:
                    await stage.fill_or_timeout(worker, cfg.batch_size)
            evict = [k for k, t in live.items() if t.request.done]
            for key in evict:
                del live[key]
            if not alone and (joins or not live):
                held = len(live) + len(admit)
                admit += stage.take(self.room(worker, held) if joins else cfg.batch_size - held)
            self._held[worker] = len(live) + len(admit)
            start = time.monotonic()
            for task in admit:
                live[task.key] = task
                stage.mark_start(task, start)
            if not live and not evict:
                if not admit:  # the queued rows are another worker's share: wait for a change
                    await stage.wait_rows(worker)
                continue
            due = self.progress.next_due(list(live.values()))
            now = time.monotonic()
            budget = 1 if due is not None and due <= now else MAX_STEPS_PER_CALL
            call = StepCall([StepRow(t.key, t.value) for t in admit], evict, budget)
            running = _Running(live, may_join=joins and not alone and len(live) < cfg.batch_size)
            self._calls[worker] = running
            timer = (asyncio.get_running_loop().call_later(due - now, worker.stop_early)
                     if due is not None and budget > 1 else None)
            try:
                reply = await stage.timed(worker, worker.step(call))
            except WorkerLost:
                raise stage.lost_with(worker, list(live.values())) from None
            except Exception as exc:  # noqa: BLE001 - timed out: the worker is being replaced
                self._failed(list(live.values()), exc)
                raise stage.lost_with(worker, []) from None
            finally:
                self._calls.pop(worker, None)
                if timer is not None:
                    timer.cancel()
            if reply.error is not None:
                group, live = list(live.values()), {}
                self._failed(group, reply.error)
                continue
            per_step = (time.monotonic() - start) / max(1, reply.steps)
            for _ in range(reply.steps):  # the metrics stay per step
                stage.compute_hist.observe(per_step)
                stage.rows_hist.observe(len(live))
            if reply.threads and reply.steps:
                stage.metrics.threads.labels(stage.name, str(reply.threads)).inc(reply.steps)
            for key, exc in reply.refused.items():
                task = live.pop(key, None)
                if task is not None:
                    stage.fail_row(task, exc)
            self.progress.report(live, reply.result)
            for key, out in reply.result.finished.items():
                task = live.pop(key, None)
                if task is None or task.request.done:
                    continue
                if isinstance(out, BaseException):
                    stage.fail_row(task, out)
                else:
                    await stage.row_done(task, out)

    def room(self, worker: Worker, held: int) -> int:
        """How many queued rows this worker may take, holding `held`: up to batch_size, and
        with several workers an even share of the rows held and queued, so that one worker
        does not take every row while another idles (the others take the rest when they next
        come round: a queued row stops their calls early). Up to half a batch in all, the
        rows stay on the first live worker: split finer, two workers' steps cost more than
        they save (two thread workers stepping 2 rows each of one 4-row request took
        1.2-1.3x as long as one stepping all 4, and halves of 32 rows 0.88x as many
        images/s; README, Performance). Static batching takes what fits: its rows join no
        running batch, so a share left queued would wait."""
        stage = self.stage
        room = stage.cfg.batch_size - held
        live = [w for w in stage.workers if not w.lost.is_set()]
        if len(live) < 2 or worker not in live or room <= 0:
            return room
        total = held + len(stage.pending) + sum(self._held.get(w, 0) for w in live if w is not worker)
        small = stage.cfg.batch_size // 2
        if worker is live[0]:
            share = max(-(-total // len(live)), small)  # rounded up: every row has a worker
        elif total <= small:
            return 0
        else:
            share = -(-total // len(live))
        return min(room, max(0, share - held))

    def _failed(self, group: list[RowTask], exc: BaseException) -> None:
        """A call failed with these rows in its running batch: re-run them in halves, alone,
        from their seeds; a row that fails alone fails (or is tried again, with retry)."""
        group = [t for t in group if not t.request.done]
        if not group:
            return
        if len(group) == 1:
            task = group[0]
            if task.attempts < self.stage.cfg.retry:
                task.attempts += 1
                self.suspects.appendleft(group)
            else:
                self.stage.fail_row(task, exc)
                return
        else:
            half = len(group) // 2
            self.suspects.extendleft([group[half:], group[:half]])
        self.stage._signal_rows()


class _Running:
    __slots__ = ("live", "may_join")

    def __init__(self, live: dict, may_join: bool):
        self.live, self.may_join = live, may_join
