"""One OP at run time: its channel, its queue of rows, its workers and their supervision.

Packets from the channel become rows (`split`), rows wait in the stage's `RowQueue` for a
worker (in the order of their requests' ranks: policy.py), and each row's result goes back to its request; when a request's rows are all
done, `merge` makes its output and the engine routes it on. How a worker gets its rows is
the runner's concern: `batching.BatchRunner` for batch OPs, `stepping.StepDriver` (which
runs the plain `StepScheduler`) for stepping OPs. Every scheduling decision is taken on
the event loop. The runners use the stage's public methods only; the queue is the
stage's alone.

A worker that is lost (dead, or abandoned after a call ran past timeout_ms) gives its
rows back to the front of the queue, where the OP's live workers take them, and is
replaced; the engine hears when the OP's count of live workers reaches or leaves zero.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tessera.server.engine.channel import Channel
from tessera.server.engine.config import OpConfig
from tessera.server.engine.errors import EngineError, OpFailed
from tessera.server.engine.policy import FIRST, Ordered, Rank
from tessera.server.engine.request import Progress, Request, StageState
from tessera.server.engine.workers import Supervisor, Worker, WorkerLost, WorkerSpec, make_worker

if TYPE_CHECKING:
    from tessera.server.engine.engine import Engine

log = logging.getLogger("tessera.engine")


@dataclass(slots=True)
class RowTask:
    request: Request
    index: int
    value: Any
    enqueued: float
    attempts: int = 0
    rank: Rank = (0.0, 0.0)  # its request's rank (policy.py): where it stands in the queue
    trace: dict[str, str] | None = None  # the W3C context its worker calls carry (tracing on)

    @property
    def key(self) -> tuple[str, int]:
        return (self.request.id, self.index)


def as_engine_error(exc: BaseException, op: str, request_id: str) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return OpFailed(op, "timed out")
    log.error("stage %s raised %s: %s", op, type(exc).__name__, exc,
              exc_info=(type(exc), exc, exc.__traceback__), extra={"request_id": request_id})
    return OpFailed(op, f"{type(exc).__name__}: {exc}")


async def gather_settled(aws) -> list[Any]:
    """asyncio.gather that, when one awaitable fails, still waits for every other to end
    before raising the first failure. A worker's setup runs on a thread that cannot be
    cancelled: a start that raised while another worker still loaded its model left that
    thread inside torch, and the interpreter's exit then aborted the process
    ("terminate called without an active exception") instead of exiting with its code."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class CallTimedOut(OpFailed):
    """A worker call ran past timeout_ms; the worker was abandoned and is being replaced."""


class RowQueue:
    """The rows waiting for a worker, by rank (policy.py), with notify-all signals: one when
    rows come (or a worker should look again), one when room is made (the feed waits for it)."""

    def __init__(self):
        self._rows: Ordered[RowTask] = Ordered()
        self._rows_event = asyncio.Event()
        self._room_event = asyncio.Event()

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def oldest(self) -> RowTask:
        """The row that has waited longest (a batch's timeout runs from it)."""
        return min(self._rows, key=lambda t: t.enqueued)

    @property
    def first_rank(self) -> Rank | None:
        """The rank of the row that goes next (None: none waits)."""
        return self._rows.peek_rank()

    def add(self, tasks: list[RowTask]) -> None:
        for task in tasks:
            self._rows.push(task, task.rank)
        self.wake()

    def put_back(self, tasks: list[RowTask]) -> None:
        """First in line again (rows of a lost worker, or rows to retry), in their order."""
        for task in tasks:
            self._rows.push(task, FIRST)
        if tasks:
            self.wake()

    def take(self, limit: int) -> list[RowTask]:
        """Up to `limit` rows, first rank first, skipping rows whose request is done."""
        out = []
        while self._rows and len(out) < limit:
            task = self._rows.pop()
            if not task.request.done:
                out.append(task)
        self._made_room()
        return out

    def drop(self, request: Request) -> None:
        if self._rows.remove(lambda t: t.request is request):
            self._made_room()

    def wake(self) -> None:
        """Wake every waiter for rows (they hold the event they saw)."""
        ev, self._rows_event = self._rows_event, asyncio.Event()
        ev.set()

    @property
    def worst_rank(self) -> Rank | None:
        """The rank of the queued row that goes last (None: none waits)."""
        return max((t.rank for t in self._rows), default=None)

    def _made_room(self) -> None:
        ev, self._room_event = self._room_event, asyncio.Event()
        ev.set()

    look_again = _made_room  # wake the feed (room was made, or a packet came to the channel)

    async def rows_came(self, timeout: float | None) -> bool:
        ev = self._rows_event
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def room_made(self) -> None:
        await self._room_event.wait()


class OpStage:
    def __init__(self, engine: Engine, cfg: OpConfig):
        self.engine, self.cfg, self.name = engine, cfg, cfg.name
        self.front = cfg.op_class(**cfg.settings)  # split/merge run here, on the loop
        self.front.name = cfg.name
        self.tell = tell = engine.observers  # what happens here is reported there (observe.py)
        self.queue = RowQueue()

        def depth(depth: int) -> None:
            tell.channel_depth(cfg.name, depth)
            self.queue.look_again()  # the feed: a packet that came may outrank the queued rows

        self.channel = Channel(cfg.name, cfg.inputs, cfg.channel_capacity, depth)
        self.supervisor = Supervisor(cfg.name, tell, engine.health_changed)

        def wait(seconds: float) -> None:  # on the compute thread
            tell.device_waited(cfg.name, seconds)
        self.workers: list[Worker] = []
        for i in range(cfg.concurrency):
            device = cfg.devices[i % len(cfg.devices)]
            plan = engine.platforms.of(device).plan(cfg, i, device)
            if plan is None:  # the platform runs fewer (one stepping worker per GPU)
                continue
            spec = WorkerSpec(cfg.op_class, cfg.settings, cfg.name, device, i, cfg.batch_size,
                              compute=plan.compute)
            worker = make_worker(spec, cfg.mode, shared=plan.shared, on_wait=wait,
                                 ray_actor_options=cfg.ray_actor_options)
            worker.on_lost = self._on_lost
            self.workers.append(worker)
        self.high_water = cfg.batch_size * len(self.workers)  # rows pulled ahead of the workers
        self._tasks: list[asyncio.Task] = []
        if cfg.stepping:
            from tessera.server.engine.stepping import StepDriver
            self.runner = StepDriver(self)
        else:
            from tessera.server.engine.batching import BatchRunner
            self.runner = BatchRunner(self)

    @property
    def upcoming(self) -> int:
        """Requests in flight that have yet to bring their rows here (the engine counts them)."""
        return self.engine.upcoming(self.name)

    def live_workers(self) -> list[Worker]:
        """The OP's workers that are not lost, in order."""
        return [w for w in self.workers if not w.lost.is_set()]

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await gather_settled(w.start() for w in self.workers)
        for w in self.workers:
            self.supervisor.up(w)
        self._tasks.append(asyncio.create_task(self._feed(), name=f"{self.name}-feed"))
        for w in self.workers:
            self._tasks.append(asyncio.create_task(self._serve(w), name=f"{self.name}-{w.index}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(w.close() for w in self.workers), return_exceptions=True)
        self.supervisor.close()

    async def _serve(self, worker: Worker) -> None:
        """Run the worker's loop; when the worker is lost, replace it and go on."""
        while True:
            try:
                await self.runner.run(worker)
            except WorkerLost as lost:
                self.lose(worker, getattr(lost, "rows", []))
            await self.supervisor.replace(worker)

    @staticmethod
    def lost_with(worker: Worker, tasks: list[RowTask]) -> WorkerLost:
        """The error a runner raises when its worker is lost holding `tasks`."""
        error = WorkerLost(worker.spec.label)
        error.rows = tasks
        return error

    def lose(self, worker: Worker, tasks: list[RowTask]) -> None:
        """The worker is gone with these rows: they go first in line for the live workers
        (attempts unchanged: a lost worker is not the row's fault; a stepping row restarts
        from its seed)."""
        tasks = [t for t in tasks if not t.request.done]
        self.queue.put_back(tasks)
        self.supervisor.down(worker, len(tasks))

    def requeue(self, tasks: list[RowTask]) -> None:
        """Rows to run again (a retry), first in line."""
        self.queue.put_back(tasks)

    def wake(self) -> None:
        """Ask the idle workers to look again (rows wait for a retry)."""
        self.queue.wake()

    def _on_lost(self, worker: Worker) -> None:
        self.queue.wake()  # an idle runner wakes, sees it, and hands the worker over

    def forget(self, request: Request) -> None:
        self.channel.remove(request.id)
        self.queue.drop(request)
        self.runner.request_left(request)

    async def timed(self, worker: Worker, awaitable):
        """Await a worker call under timeout_ms; past it the worker is abandoned."""
        if self.cfg.timeout_ms <= 0:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, self.cfg.timeout_ms / 1000)
        except asyncio.TimeoutError:
            worker.abandon()
            raise CallTimedOut(self.name, f"a call took longer than timeout_ms={self.cfg.timeout_ms:g}") from None

    # -- waiting for rows ------------------------------------------------------------------
    async def wait_rows(self, worker: Worker, timeout: float | None = None) -> bool:
        """Wait for new rows (or a lost worker, which raises WorkerLost); False on timeout."""
        if worker.lost.is_set():
            raise WorkerLost(worker.spec.label)
        came = await self.queue.rows_came(timeout)
        if worker.lost.is_set():
            raise WorkerLost(worker.spec.label)
        return came

    async def wait_for_work(self, worker: Worker, retrying: Callable[[], bool] = lambda: False) -> None:
        """Until rows are queued, or `retrying()` (the runner has rows of its own to re-run)."""
        while not self.queue and not retrying():
            await self.wait_rows(worker)

    # -- packets become rows ---------------------------------------------------------------
    def _outranked(self) -> bool:
        """Whether the channel's next packet goes before a row already queued: it joins the queue
        even at high water, so an urgent request never waits behind the rows pulled ahead."""
        first, worst = self.channel.first_rank, self.queue.worst_rank
        return first is not None and worst is not None and first < worst

    async def _feed(self) -> None:
        while True:
            while len(self.queue) >= self.high_water and not self._outranked():
                await self.queue.room_made()
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
            request.stages[self.name] = state  # no longer upcoming here
            if not rows:
                state.first_start = time.monotonic()
                await self.complete(request, state)
                continue
            now = time.monotonic()
            self.tell.queued(self.name, request, state, len(rows))
            trace = self.tell.context(self.name, request)
            self.queue.add([RowTask(request, i, row, now, rank=request.rank, trace=trace)
                            for i, row in enumerate(rows)])
            self.runner.rows_arrived()

    def take(self, limit: int) -> list[RowTask]:
        """Up to `limit` queued rows, first rank first."""
        return self.queue.take(limit)

    async def fill_or_timeout(self, worker: Worker, size: int) -> None:
        """Wait for `size` rows, at most batch_timeout_ms after the oldest arrived, and only
        while a request in flight has yet to bring its rows here (alone, a row never waits)."""
        wait = self.cfg.batch_timeout_ms / 1000
        if size <= 1 or wait <= 0:
            return
        deadline = self.queue.oldest.enqueued + wait
        while self.queue and len(self.queue) < size and self.upcoming > 0:
            left = deadline - time.monotonic()
            if left <= 0 or not await self.wait_rows(worker, left):
                break

    # -- rows become outputs ---------------------------------------------------------------
    def mark_start(self, worker: Worker, tasks: list[RowTask], start: float, joined: bool = False) -> None:
        """These rows' queue time ends: a batch call starts with them, or (`joined`) they join
        a stepping worker's running batch."""
        for task in tasks:
            state = task.request.stages[self.name]
            if state.first_start is None:
                state.first_start = start
        if joined:
            self.tell.joined(self.name, worker, tasks, start)
        else:
            self.tell.batched(self.name, worker, tasks, start)

    def fail_row(self, task: RowTask, exc: BaseException) -> None:
        self.engine.fail(task.request, as_engine_error(exc, self.name, task.request.id))

    async def row_done(self, task: RowTask, out: Any) -> None:
        state = task.request.stages[self.name]
        state.outputs[task.index] = out
        state.remaining -= 1
        if state.remaining == 0:
            await self.complete(task.request, state)

    async def complete(self, request: Request, state: StageState) -> None:
        state.finished = time.monotonic()
        self.tell.stage_done(self.name, request, state)
        try:
            value = self.front.merge(state.value, state.outputs)
        except Exception as exc:  # noqa: BLE001
            self.engine.fail(request, as_engine_error(exc, self.name, request.id))
            return
        state.outputs, state.value = [], None
        if request.events is not None and not self.cfg.stepping:
            request.events.put_nowait(Progress(request.id, self.name, 1, 1))
        await self.engine.route(self.name, request, value)
