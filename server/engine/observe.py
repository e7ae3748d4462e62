"""The observer seam: a request's life told in one place, for metrics, logs and traces.

The engine, its stages, runners and supervisors report what happens (a request admitted
or refused, rows queued at an OP, a batch or a stepping call on worker W with rows R,
rows evicted, a stage done, the request finished or failed, workers lost and replaced);
subscribers turn that into what they record. Nothing is recorded by hand in the stages.
LitServe's `Callback` and vLLM's stat loggers are the shape.

    class Slow(Observer):
        def finished(self, request, result):
            if result.total_ms > 1000:
                log.warning("slow: %s", request.id)

    engine = Engine(config, observers=[Slow()])   # beside the metrics (and traces, if on)

Every method is called on the event loop, except `device_waited`, which the compute
thread calls as a call takes the device's turn. A subscriber must not raise and must be
quick: it runs inside the engine's scheduling.
"""
from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tessera.server.engine.errors import EngineError
    from tessera.server.engine.metrics import EngineMetrics
    from tessera.server.engine.request import Request, Result, StageState
    from tessera.server.engine.stage import RowTask
    from tessera.server.engine.workers import Worker
    from tessera.server.engine.workers.base import SpanRecord

log = logging.getLogger("tessera.engine")


@dataclass(slots=True)
class Call:
    """One worker call as observers hear of it: a batch call, or a stepping call's steps."""
    op: str
    worker: Worker
    tasks: Sequence[RowTask]      # the rows it computed (a stepping call: its running batch)
    start: float                  # time.monotonic() when it was handed to the worker
    seconds: float                # until its reply (the wait for the device's turn included)
    steps: int = 0                # a stepping call's steps (0: a batch call)
    threads: int = 0              # the thread count it computed with, where known (0: not)
    spans: Sequence[SpanRecord] = ()  # what the worker side timed, for traces


class Observer:
    """Every hook a no-op: override the ones you need."""

    # -- a request's life ------------------------------------------------------------------
    def refused(self, outcome: str, priority: int, request_id: str = "",
                trace_context: dict[str, str] | None = None) -> None:
        """A request was refused at admission (overloaded, shutting_down, invalid_input);
        `request_id`: the id it asked for ("" if none), `trace_context`: the caller's W3C headers."""

    def admitted(self, request: Request) -> None:
        """A request was admitted; `request.trace_context` holds the caller's W3C headers."""

    def queued(self, op: str, request: Request, state: StageState, rows: int) -> None:
        """A request's value reached OP `op` and became `rows` rows in its queue."""

    def channel_depth(self, op: str, depth: int) -> None:
        """Requests now waiting in OP `op`'s channel."""

    def batched(self, op: str, worker: Worker, tasks: Sequence[RowTask], start: float) -> None:
        """A batch call starts on `worker` with these rows (their queue time ends at `start`)."""

    def joined(self, op: str, worker: Worker, tasks: Sequence[RowTask], start: float) -> None:
        """These rows join `worker`'s running batch (a stepping OP's admission)."""

    def evicted(self, op: str, worker: Hashable, tasks: Sequence[RowTask], reason: str) -> None:
        """Rows left a running batch unfinished: `left` (their request ended) or `preempted`
        (a more urgent row took the place; the row waits again and restarts from its seed)."""

    def computed(self, call: Call) -> None:
        """A worker call returned (a batch call, each half of a bisected one, or a stepping call)."""

    def stage_done(self, op: str, request: Request, state: StageState) -> None:
        """All of a request's rows at `op` are done; `state` has its times."""

    def context(self, op: str, request: Request) -> dict[str, str] | None:
        """The trace context (W3C headers) a worker call carries for this request at `op`."""
        return None

    def finished(self, request: Request, result: Result) -> None:
        """The request ended with a result."""

    def failed(self, request: Request, error: EngineError, outcome: str) -> None:
        """The request ended with an error (`outcome`: cancelled, deadline_exceeded, failed...)."""

    # -- workers ---------------------------------------------------------------------------
    def device_waited(self, op: str, seconds: float) -> None:
        """A call waited this long for its device's turn (called on the compute thread)."""

    def worker_up(self, op: str, worker: Worker, live: int) -> None:
        """A worker started (or was replaced); `live` of the OP's workers are up."""

    def worker_lost(self, op: str, worker: Worker, rows: int, live: int) -> None:
        """A worker was lost holding `rows` rows, given back to the queue."""

    def worker_replaced(self, op: str, worker: Worker) -> None:
        """A lost worker started again."""

    def workers_closed(self, op: str, live: int) -> None:
        """The OP stopped; its `live` workers are no longer up."""


class Observers(Observer):
    """The engine's subscribers, told in order; one that raises is logged and skipped."""

    def __init__(self, observers: Sequence[Observer] = ()):
        self.observers = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def context(self, op: str, request: Request) -> dict[str, str] | None:
        for observer in self.observers:
            found = observer.context(op, request)
            if found is not None:
                return found
        return None


def _fan_out(name: str):
    def tell(self: Observers, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, name)(*args)
            except Exception:  # noqa: BLE001 - a subscriber's bug never fails a request
                log.exception("observer %s failed in %s", type(observer).__name__, name)
    tell.__name__ = name
    return tell


for _name in ("refused", "admitted", "queued", "channel_depth", "batched", "joined", "evicted", "computed",
              "stage_done", "finished", "failed", "device_waited", "worker_up", "worker_lost",
              "worker_replaced", "workers_closed"):
    setattr(Observers, _name, _fan_out(_name))


class MetricsObserver(Observer):
    """The engine's Prometheus metrics (metrics.py), recorded from the seam: the same names
    and labels as before it existed."""

    def __init__(self, metrics: EngineMetrics):
        from tessera.server.engine.metrics import level
        self.m = metrics
        self._level = level
        self._depth: dict[str, Any] = {}  # per OP, a setter that moves the gauge by differences

    def refused(self, outcome: str, priority: int, request_id: str = "",
                trace_context: dict[str, str] | None = None) -> None:
        self.m.requests.labels(outcome).inc()

    def admitted(self, request: Request) -> None:
        self.m.inflight.inc()

    def channel_depth(self, op: str, depth: int) -> None:
        # By differences, not set: two versions of one model each add their part (metrics.level).
        setter = self._depth.get(op)
        if setter is None:
            setter = self._depth[op] = self._level(self.m.depth.labels(op))
        setter(depth)

    def batched(self, op: str, worker: Worker, tasks: Sequence[RowTask], start: float) -> None:
        queue = self.m.queue.labels(op)
        for task in tasks:
            queue.observe(start - task.enqueued)
        self.m.batch_rows.labels(op).observe(len(tasks))

    def joined(self, op: str, worker: Worker, tasks: Sequence[RowTask], start: float) -> None:
        queue = self.m.queue.labels(op)
        for task in tasks:
            queue.observe(start - task.enqueued)

    def computed(self, call: Call) -> None:
        compute = self.m.compute.labels(call.op)
        if not call.steps:  # a batch call (its rows were counted when it started)
            compute.observe(call.seconds)
            if call.threads:
                self.m.threads.labels(call.op, str(call.threads)).inc()
            return
        per_step, rows = call.seconds / call.steps, self.m.batch_rows.labels(call.op)
        for _ in range(call.steps):  # the metrics stay per step
            compute.observe(per_step)
            rows.observe(len(call.tasks))
        if call.threads:
            self.m.threads.labels(call.op, str(call.threads)).inc(call.steps)

    def finished(self, request: Request, result: Result) -> None:
        self.m.latency.observe(result.total_ms / 1000)
        self._ended("ok")

    def failed(self, request: Request, error: EngineError, outcome: str) -> None:
        self._ended(outcome)

    def _ended(self, outcome: str) -> None:
        self.m.inflight.dec()
        self.m.requests.labels(outcome).inc()

    def device_waited(self, op: str, seconds: float) -> None:
        self.m.device_wait.labels(op).observe(seconds)

    def worker_up(self, op: str, worker: Worker, live: int) -> None:
        self.m.live_workers.labels(op).inc()  # inc/dec, not set: two versions of one model add up

    def worker_lost(self, op: str, worker: Worker, rows: int, live: int) -> None:
        self.m.live_workers.labels(op).dec()
        self.m.rows_retried.labels(op).inc(rows)

    def worker_replaced(self, op: str, worker: Worker) -> None:
        self.m.worker_restarts.labels(op).inc()

    def workers_closed(self, op: str, live: int) -> None:
        self.m.live_workers.labels(op).dec(live)


class LogObserver(Observer):
    """The engine's log lines about requests and workers, from the seam."""

    def failed(self, request: Request, error: EngineError, outcome: str) -> None:
        from tessera.server.engine.errors import OpFailed
        if isinstance(error, OpFailed):
            log.warning("request failed: %s", error, extra={"request_id": request.id})

    def worker_lost(self, op: str, worker: Worker, rows: int, live: int) -> None:
        log.warning("%s: worker %d (%s) lost; %d rows retried on live workers, %d of them left",
                    op, worker.index, worker.placement, rows, live)

    def worker_replaced(self, op: str, worker: Worker) -> None:
        log.info("%s: worker %d replaced", op, worker.index)
