"""Thread workers: the OP runs on a compute thread of this process, off the event loop
(torch releases the GIL, so the loop keeps serving while it computes).

Thread workers on one device can take turns (`graph.device_turns`): they share the
device's one `ComputeThread`, first come first served, so the OPs of a pipeline compute
one at a time with every core, and torch keeps a single OpenMP team per device. Waiting
calls take the turn in the order of their most urgent row's rank (graph.policy: policy.py),
first submitted first among equals. (One team
per OP thread oversubscribes a small CPU; libgomp then stops spinning between parallel
regions and every op pays a wake-up: a 4-row sampler step took 40% longer.) The wait for
the turn is measured apart from compute. A stepping call in progress returns after its
current step once another call queues for the turn: its worker side reads `waiting`
between steps (the platform's DeviceHost.keep_stepping).
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tessera.server.engine.workers.base import StepCall, StepReply, Worker, WorkerLost, WorkerSpec
from tessera.server.engine.workers.host import OpHost

FIRST = (float("-inf"), float("-inf"))  # a call for no request (a setup) goes before the rest

log = logging.getLogger("tessera.engine")


@dataclass(eq=False)
class _Job:
    fn: Callable[..., Any]
    args: tuple
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    submitted: float
    on_start: Callable[[float], None] | None
    order: tuple = ()  # (rank, submission): its place in the turn

class ComputeThread:
    """One thread running submitted calls in order. It knows which call runs and how many
    wait (`waiting`, read by the running call between its steps), and can be replaced when a call hangs
    (the stuck thread is left to finish alone; the queue moves to a fresh thread)."""

    def __init__(self, label: str):
        self.label = label
        self._queue: list[_Job] = []  # by order (bisect keeps it sorted)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._current: _Job | None = None
        self._closed = False
        self._generation = 0
        self._spawn()

    def _spawn(self) -> None:
        self._generation += 1
        threading.Thread(target=self._run, args=(self._generation,), daemon=True,
                         name=f"{self.label}-{self._generation}").start()

    def submit(self, fn: Callable[..., Any], *args: Any,
               on_start: Callable[[float], None] | None = None, rank: tuple | None = None) -> asyncio.Future:
        """Queue a call; `rank`: its most urgent row's (None: ahead of every request's)."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, args, loop.create_future(), loop, time.monotonic(), on_start,
                   (rank or FIRST, next(self._seq)))
        with self._cond:
            if self._closed:
                raise WorkerLost(f"{self.label} is closed")
            bisect.insort(self._queue, job, key=lambda j: j.order)
            self._cond.notify()
        return job.future

    @property
    def waiting(self) -> int:
        """Calls queued behind the running one (read from any thread)."""
        return len(self._queue)

    def withdraw(self, future: asyncio.Future) -> bool:
        """Take a call that has not started out of the queue; False if it already runs."""
        with self._cond:
            for job in self._queue:
                if job.future is future:
                    self._queue.remove(job)
                    return True
        return False

    def replace_if_running(self, future: asyncio.Future) -> None:
        """The call behind `future` hangs: move the queue to a fresh thread."""
        with self._cond:
            if self._current is None or self._current.future is not future:
                return
            self._current = None
            log.warning("%s: a call ran past its timeout; its thread is abandoned", self.label)
            self._spawn()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            left, self._queue = list(self._queue), []
            self._cond.notify_all()
        for job in left:
            job.loop.call_soon_threadsafe(_settle, job.future, None, WorkerLost(f"{self.label} closed"))

    def _run(self, generation: int) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed and generation == self._generation:
                    self._cond.wait()
                if generation != self._generation or (self._closed and not self._queue):
                    return
                job = self._queue.pop(0)
                self._current = job
            if job.on_start is not None:
                job.on_start(time.monotonic() - job.submitted)
            try:
                value, error = job.fn(*job.args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                value, error = None, exc
            with self._cond:
                if self._current is job:
                    self._current = None
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, value, error)
            except RuntimeError:  # the loop is closed: nobody awaits this any more
                return


def _settle(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class ThreadWorker(Worker):
    placement = "thread"

    def __init__(self, spec: WorkerSpec, shared: ComputeThread | None = None,
                 on_wait: Callable[[float], None] | None = None):
        super().__init__(spec)
        self.shared = shared              # the device's compute thread, when workers take turns
        self.on_wait = on_wait if shared is not None else None
        self._own: ComputeThread | None = None
        self._stop = threading.Event()
        self._call: asyncio.Future | None = None
        self.host: OpHost | None = None

    @property
    def compute(self) -> ComputeThread:
        return self.shared or self._own

    @property
    def op(self):
        return self.host.op if self.host is not None else None

    async def start(self) -> None:
        if self.shared is None:
            if self._own is not None:
                self._own.close()
            self._own = ComputeThread(self.spec.label)
        # A call waiting for the device's turn is the platform's reason to end a stepping call
        # early (DeviceHost.keep_stepping), read between steps on the compute thread.
        turn = self.shared
        self.host = OpHost(self.spec, others_waiting=(lambda: turn.waiting) if turn is not None else None)
        await self._submit(self.host.setup, measured=False)
        self.lost.clear()

    async def process(self, rows: list[Any], traces: list[dict[str, str] | None] | None = None,
                      rank: tuple | None = None) -> list[Any]:
        self._check()
        out = await self._submit(self.host.process, rows, traces, rank=rank)
        self.last_threads = self.host.device.last
        self.last_spans = self.host.last_spans
        return out

    async def step(self, call: StepCall) -> StepReply:
        self._check()
        self._stop.clear()
        return await self._submit(self.host.step, call, self._stop.is_set, rank=call.rank)

    def stop_early(self) -> None:
        self._stop.set()

    def _check(self) -> None:
        if self.lost.is_set():
            raise WorkerLost(f"{self.spec.label} was abandoned")

    def abandon(self) -> None:
        self._stop.set()
        if self._call is not None and not self.compute.withdraw(self._call):
            self.compute.replace_if_running(self._call)
        self._set_lost()

    async def close(self) -> None:
        self._stop.set()
        if self._own is not None:
            self._own.close()
        if self.host is not None and not self.lost.is_set():  # an abandoned call may still run
            self.host.close()

    async def _submit(self, fn: Callable[..., Any], *args: Any, measured: bool = True,
                      rank: tuple | None = None) -> Any:
        # The last call stays known after it ends or is cancelled: abandon() reads it.
        self._call = self.compute.submit(fn, *args, on_start=self.on_wait if measured else None, rank=rank)
        return await self._call
