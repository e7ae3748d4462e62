"""One OP at run time: its channel, its pending rows, and the loops of its workers.

Batch collection is one deadline loop on a monotonic clock: a worker takes up to
`batch_size` rows, waiting at most `batch_timeout_ms` after the oldest row arrived for a
fuller batch. A stepping OP's worker instead admits rows into its running batch
between steps and hands back each row the moment it finishes; it runs several steps per
call while no row finishes, joins or leaves and no progress event is due.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tessera.server.engine.channel import Channel
from tessera.server.engine.config import OpConfig
from tessera.server.engine.errors import EngineError, InvalidInput, OpFailed
from tessera.server.engine.op import StepResult, StepRow
from tessera.server.engine.request import Progress, Request, StageState
from tessera.server.engine.worker import Worker

if TYPE_CHECKING:
    from tessera.server.engine.engine import Engine

log = logging.getLogger("tessera.engine")

# A stepping OP's worker runs up to this many steps per call while nothing needs the
# event loop (a row finished, a row waits to join, a request left, a preview is due) or
# the device (another OP's call waits for its turn): one hand-off per several steps.
MAX_STEPS_PER_CALL = 16


@dataclass(slots=True)
class RowTask:
    request: Request
    index: int
    value: Any
    enqueued: float
    attempts: int = 0


def as_engine_error(exc: BaseException, op: str, request_id: str) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return OpFailed(op, "timed out")
    log.error("stage %s raised %s: %s", op, type(exc).__name__, exc,
              exc_info=(type(exc), exc, exc.__traceback__), extra={"request_id": request_id})
    return OpFailed(op, f"{type(exc).__name__}: {exc}")


class OpStage:
    def __init__(self, engine: Engine, cfg: OpConfig):
        self.engine, self.cfg, self.name = engine, cfg, cfg.name
        self.front = cfg.op_class(**cfg.settings)  # split/merge run here, on the loop
        self.front.name = cfg.name
        depth = engine.metrics.depth.labels(cfg.name)
        self.channel = Channel(cfg.name, cfg.inputs, cfg.channel_capacity, depth.set)
        self.pending: deque[RowTask] = deque()
        self.upcoming = 0  # requests in flight that have yet to reach this OP (kept by the engine)
        wait = engine.metrics.device_wait.labels(cfg.name).observe
        self.workers = []
        for i in range(cfg.concurrency):
            device = cfg.devices[i % len(cfg.devices)]
            self.workers.append(Worker(cfg.op_class, cfg.settings, cfg.name, device, cfg.mode, i,
                                       engine.device_thread(device) if cfg.op_class.uses_device else None,
                                       wait))
        self.high_water = cfg.batch_size * cfg.concurrency  # rows pulled ahead of the workers
        self._rows_event = asyncio.Event()
        self._room_event = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        m = engine.metrics
        self._queue_hist, self._compute_hist = m.queue.labels(self.name), m.compute.labels(self.name)
        self._rows_hist = m.batch_rows.labels(self.name)
        self._progress_every = engine.config.progress_interval_ms / 1000

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.gather(*(w.start() for w in self.workers))
        self._tasks.append(asyncio.create_task(self._feed(), name=f"{self.name}-feed"))
        loop = self._run_steps if self.cfg.stepping else self._run_batches
        for w in self.workers:
            self._tasks.append(asyncio.create_task(loop(w), name=f"{self.name}-{w.index}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self.workers:
            w.close()

    def forget(self, request: Request) -> None:
        self.channel.remove(request.id)
        if any(t.request is request for t in self.pending):
            self.pending = deque(t for t in self.pending if t.request is not request)
            self._signal_room()

    # -- signalling (notify-all events: waiters hold the event they saw) --------------------
    def _signal_rows(self) -> None:
        ev, self._rows_event = self._rows_event, asyncio.Event()
        ev.set()

    def _signal_room(self) -> None:
        ev, self._room_event = self._room_event, asyncio.Event()
        ev.set()

    async def _wait_rows(self, timeout: float | None = None) -> bool:
        ev = self._rows_event
        try:
            await asyncio.wait_for(ev.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- packets become rows ---------------------------------------------------------------
    async def _feed(self) -> None:
        while True:
            while len(self.pending) >= self.high_water:
                await self._room_event.wait()
            packet = await self.channel.get()
            request = packet.request
            if request.done:
                continue
            try:
                rows = self.front.split(packet.value)
            except Exception as exc:  # noqa: BLE001 - any split failure fails this request only
                self.engine.fail(request, as_engine_error(exc, self.name, request.id))
                continue
            state = StageState(arrived=packet.arrived, value=packet.value,
                               outputs=[None] * len(rows), remaining=len(rows))
            request.stages[self.name] = state
            self.upcoming -= 1
            if not rows:
                state.first_start = time.monotonic()
                await self._complete(request, state)
                continue
            now = time.monotonic()
            self.pending.extend(RowTask(request, i, row, now) for i, row in enumerate(rows))
            self._signal_rows()

    def _take(self, limit: int) -> list[RowTask]:
        out = []
        while self.pending and len(out) < limit:
            task = self.pending.popleft()
            if not task.request.done:
                out.append(task)
        self._signal_room()
        return out

    # -- batch OPs -------------------------------------------------------------------------
    async def _run_batches(self, worker: Worker) -> None:
        size = self.cfg.batch_size
        while True:
            while not self.pending:
                await self._wait_rows()
            await self._fill_or_timeout(size)
            batch = self._take(size)
            if batch:
                await self._execute(worker, batch)

    async def _fill_or_timeout(self, size: int) -> None:
        """Wait for `size` rows, at most batch_timeout_ms after the oldest arrived, and only
        while a request in flight has yet to bring its rows here (alone, a row never waits)."""
        wait = self.cfg.batch_timeout_ms / 1000
        if size <= 1 or wait <= 0:
            return
        deadline = self.pending[0].enqueued + wait
        while self.pending and len(self.pending) < size and self.upcoming > 0:
            left = deadline - time.monotonic()
            if left <= 0 or not await self._wait_rows(left):
                break

    async def _execute(self, worker: Worker, batch: list[RowTask]) -> None:
        start = time.monotonic()
        for task in batch:
            self._mark_start(task, start)
        self._rows_hist.observe(len(batch))
        outcomes = await self._isolate(worker, [t.value for t in batch])
        for task, out in zip(batch, outcomes):
            if task.request.done:
                continue
            if isinstance(out, BaseException):
                if not isinstance(out, InvalidInput) and task.attempts < self.cfg.retry:
                    task.attempts += 1
                    self.pending.appendleft(task)
                    self._signal_rows()
                    continue
                self.engine.fail(task.request, as_engine_error(out, self.name, task.request.id))
                continue
            await self._row_done(task, out)

    async def _isolate(self, worker: Worker, values: list) -> list:
        """Run a batch; if it raises, split it to find the rows at fault (batch-mates live)."""
        start = time.monotonic()
        try:
            out = await self._timed(worker.process(values))
            if not isinstance(out, list) or len(out) != len(values):
                raise OpFailed(self.name, f"process() returned {len(out) if isinstance(out, list) else type(out).__name__}"
                                          f" results for {len(values)} rows")
            return out
        except Exception as exc:  # noqa: BLE001 - isolated below, reported per row
            if len(values) == 1 or isinstance(exc, (asyncio.TimeoutError, OpFailed)):
                return [exc] * len(values)
            half = len(values) // 2
            return await self._isolate(worker, values[:half]) + await self._isolate(worker, values[half:])
        finally:
            self._compute_hist.observe(time.monotonic() - start)

    async def _timed(self, awaitable):
        if self.cfg.timeout_ms <= 0:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, self.cfg.timeout_ms / 1000)
        except asyncio.TimeoutError:
            raise OpFailed(self.name, f"a call took longer than timeout_ms={self.cfg.timeout_ms:g}") from None

    # -- stepping OPs ----------------------------------------------------------------------
    async def _run_steps(self, worker: Worker) -> None:
        op = worker.op
        op.capacity = self.cfg.batch_size
        live: dict[tuple, RowTask] = {}
        broken: list[tuple] = []
        while True:
            if not live:
                while not self.pending:
                    await self._wait_rows()
                await self._fill_or_timeout(self.cfg.batch_size)
            evict = broken + [k for k, t in live.items() if t.request.done]
            broken = []
            for key in evict:
                live.pop(key, None)
            room = self.cfg.batch_size - len(live) if (op.joins_mid_run or not live) else 0
            admit = self._take(room)
            rows = [StepRow((t.request.id, t.index), t.value) for t in admit]
            watch = list(live.values()) + admit  # what the worker checks between steps

            def run(evict=evict, rows=rows, watch=watch):
                if evict:
                    op.evict(evict)
                failed = op.admit(rows) if rows else None
                if not op.active:
                    return failed or {}, StepResult(), 0
                result, steps = op.step(), 1
                # Keep stepping on the worker while nothing needs the loop or the device: no
                # row finished or failed, no preview or progress due, no request left, no
                # row to join, no other OP's call waiting for this device's turn.
                while (steps < MAX_STEPS_PER_CALL and op.active and not failed and not result.finished
                       and not worker.others_waiting()
                       and not any(p.preview is not None for p in result.progress.values())
                       and not (op.joins_mid_run and self.pending)
                       and not any(t.request.done or self._progress_due(t) for t in watch)):
                    more = op.step()
                    result.progress.update(more.progress)
                    result.finished.update(more.finished)
                    steps += 1
                return failed or {}, result, steps

            start = time.monotonic()
            for task, row in zip(admit, rows):
                live[row.key] = task
                self._mark_start(task, start)
            try:
                failed, result, steps = await self._timed(worker.call(run))
            except Exception as exc:  # noqa: BLE001 - the running batch is lost; its rows fail
                for key, task in live.items():
                    self.engine.fail(task.request, as_engine_error(exc, self.name, task.request.id))
                broken, live = list(live), {}
                continue
            per_step = (time.monotonic() - start) / max(1, steps)
            for _ in range(steps):  # the metrics stay per step
                self._compute_hist.observe(per_step)
                self._rows_hist.observe(len(live))
            for key, exc in failed.items():
                task = live.pop(key, None)
                if task is not None:
                    self.engine.fail(task.request, as_engine_error(exc, self.name, task.request.id))
            self._report_progress(live, result)
            for key, out in result.finished.items():
                task = live.pop(key, None)
                if task is None or task.request.done:
                    continue
                if isinstance(out, BaseException):
                    self.engine.fail(task.request, as_engine_error(out, self.name, task.request.id))
                else:
                    await self._row_done(task, out)

    def _progress_due(self, task: RowTask) -> bool:
        """Whether this row's request is owed a Progress event (read from the worker too)."""
        return task.request.events is not None and self._interval_passed(
            task.request.stages[self.name], time.monotonic())

    def _interval_passed(self, state: StageState, now: float) -> bool:
        return state.progress_sent is None or now - state.progress_sent >= self._progress_every

    def _report_progress(self, live: dict[tuple, RowTask], result: StepResult) -> None:
        touched: dict[str, Request] = {}
        previews: set[str] = set()
        for key, prog in result.progress.items():
            task = live.get(key)
            if task is None or task.request.events is None:
                continue
            state = task.request.stages[self.name]
            if state.progress is None:
                state.progress = {}
            state.progress[task.index] = prog
            touched[task.request.id] = task.request
            if prog.preview is not None:
                previews.add(task.request.id)
        now = time.monotonic()
        for request in touched.values():
            state = request.stages[self.name]
            rows = len(state.outputs)
            per_row = max(p.total for p in state.progress.values())
            done = sum(p.completed for p in state.progress.values()) + per_row * sum(
                1 for i in range(rows) if i not in state.progress and state.outputs[i] is not None)
            if not (done >= per_row * rows or request.id in previews or self._interval_passed(state, now)):
                continue
            state.progress_sent = now
            preview = state.progress.get(0).preview if 0 in state.progress else None
            request.events.put_nowait(Progress(request.id, self.name, done, per_row * rows, preview))

    # -- rows become outputs ---------------------------------------------------------------
    def _mark_start(self, task: RowTask, start: float) -> None:
        state = task.request.stages[self.name]
        if state.first_start is None:
            state.first_start = start
        self._queue_hist.observe(start - task.enqueued)

    async def _row_done(self, task: RowTask, out: Any) -> None:
        state = task.request.stages[self.name]
        state.outputs[task.index] = out
        state.remaining -= 1
        if state.remaining == 0:
            await self._complete(task.request, state)

    async def _complete(self, request: Request, state: StageState) -> None:
        state.finished = time.monotonic()
        try:
            value = self.front.merge(state.value, state.outputs)
        except Exception as exc:  # noqa: BLE001
            self.engine.fail(request, as_engine_error(exc, self.name, request.id))
            return
        state.outputs, state.value = [], None
        if request.events is not None and not self.cfg.stepping:
            request.events.put_nowait(Progress(request.id, self.name, 1, 1))
        await self.engine.route(self.name, request, value)
