"""The one interface every worker speaks, wherever it runs (thread, process, Ray actor).

The event loop makes every scheduling decision; a worker only computes. A batch call
hands over rows and gets one result per row back. A stepping call hands over a plain
`StepCall` (rows to admit, keys to evict, how many steps it may run) and gets a plain
`StepReply` (rows refused, rows finished, progress, steps run). While a stepping call
runs, `stop_early()` asks it to return after the step in progress; the worker polls that
flag between steps and reads nothing else of the engine's.

    worker = make_worker(spec, placement)     # a ThreadWorker, ProcessWorker or RayWorker
    await worker.start()                      # creates the OP there and runs its setup
    reply = await worker.step(StepCall(admit=rows, evict=[], budget=16))
    await worker.close()

When tracing is on, the calls carry their requests' W3C trace context (a batch call's
`traces`, a stepping row's `StepRow.trace`) and the worker side times each call as plain
`SpanRecord`s under it, which come back with the reply (`last_spans`, `StepReply.spans`) for
the event loop to export: a process or Ray worker needs no exporter of its own.

A call raises `WorkerLost` when the worker died under it (a killed process, a lost Ray
actor or node) or was abandoned after a call ran past `timeout_ms`; `lost` is set the
moment that is known, whether or not a call was running. `start()` again replaces it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from tessera.server.engine.op import Op, StepResult, StepRow


class WorkerLost(Exception):
    """The worker died or was abandoned; its calls in flight have no result."""


@dataclass
class WorkerSpec:
    """Everything needed to build one OP instance anywhere (it pickles: the class by name)."""
    op_class: type[Op]
    settings: dict[str, Any]
    name: str
    device: str
    index: int
    capacity: int = 1    # a stepping OP's running batch bound (the OP's batch_size)
    # The device's platform's plan for this worker (platforms/: a CpuPlan on the CPU).
    compute: Any = None

    @property
    def label(self) -> str:
        return f"{self.name}-{self.index}"


@dataclass
class SpanRecord:
    """A span the worker side timed, to be exported under `parent` (W3C traceparent headers)."""
    name: str
    parent: dict[str, str]
    start_ns: int        # time.time_ns() on the worker's machine
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepCall:
    """The event loop's decision for one stepping call."""
    admit: list[StepRow] = field(default_factory=list)
    evict: list[Hashable] = field(default_factory=list)
    budget: int = 1      # the most steps this call may run
    rank: tuple | None = None  # its most urgent row's rank (policy.py): its place in the device's turn


@dataclass
class StepReply:
    refused: dict[Hashable, BaseException] = field(default_factory=dict)  # rows admit() turned away
    result: StepResult = field(default_factory=StepResult)
    steps: int = 0
    error: BaseException | None = None  # admit/step raised: the running batch was dropped
    threads: int = 0     # the thread count the steps ran with (0: not chosen here)
    spans: list[SpanRecord] = field(default_factory=list)  # the call timed, per traced request


class Worker:
    """Base of the three placements. Subclasses implement the `_`-less abstract methods."""

    placement = ""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.lost = asyncio.Event()   # set when the worker died; cleared by start()
        self.on_lost: Callable[[Worker], None] | None = None  # told once per loss, on the loop
        self.last_threads = 0  # threads the last batch call computed with, where known (0: not)
        self.last_spans: list[SpanRecord] = []  # what the last batch call timed for its traces

    def _set_lost(self) -> None:
        if not self.lost.is_set():
            self.lost.set()
            if self.on_lost is not None:
                self.on_lost(self)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def device(self) -> str:
        return self.spec.device

    async def start(self) -> None:
        """Create the OP where this worker runs and call its setup; again to replace it."""
        raise NotImplementedError

    async def process(self, rows: list[Any], traces: list[dict[str, str] | None] | None = None,
                      rank: tuple | None = None) -> list[Any]:
        """A batch OP's call: one result (or exception instance) per row; `traces`: each row's
        trace context, when tracing is on (the call's spans are then in `last_spans`); `rank`:
        its most urgent row's (policy.py), its place in the device's turn."""
        raise NotImplementedError

    async def step(self, call: StepCall) -> StepReply:
        """A stepping OP's call: evict, admit, then up to `call.budget` steps."""
        raise NotImplementedError

    def stop_early(self) -> None:
        """Ask the stepping call in flight to return after its current step (no-op if none)."""
        raise NotImplementedError

    def abandon(self) -> None:
        """Give up on the call in flight (it ran past timeout_ms): free or replace what it
        holds so the retry does not queue behind it; marks the worker lost."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError
