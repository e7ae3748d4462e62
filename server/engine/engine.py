"""The engine: admits requests, routes them through the OP graph, answers each one.

    engine = Engine(GraphConfig.from_dict(raw))
    await engine.start()
    request = engine.submit({"prompt": "a red circle"}, timeout_s=30, priority=0)
    result = await request.result()          # Result(value, timings, total_ms)
    await engine.stop()

Every admitted request ends exactly once: with a Result, or with an EngineError. What
happens to it on the way is told to the engine's observers (observe.py): its metrics, its
log lines and, when tracing is on, its spans subscribe there.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from tessera.server.engine.config import REQUEST, GraphConfig
from tessera.server.engine.errors import (Cancelled, DeadlineExceeded, EngineError, InvalidInput,
                                  OpFailed, Overloaded, ShuttingDown)
from tessera.server.engine.metrics import EngineMetrics
from tessera.server.engine.observe import LogObserver, MetricsObserver, Observer, Observers
from tessera.server.engine.platforms import DeviceTurns, Platforms
from tessera.server.engine.policy import Policy
from tessera.server.engine.request import Request, Result, StageTiming
from tessera.server.engine.stage import OpStage, gather_settled

log = logging.getLogger("tessera.engine")

_OUTCOMES = {InvalidInput: "invalid_input", Overloaded: "overloaded", DeadlineExceeded: "deadline_exceeded",
             Cancelled: "cancelled", ShuttingDown: "shutting_down", OpFailed: "failed"}


class Engine:
    def __init__(self, config: GraphConfig, metrics: EngineMetrics | None = None, *, name: str = "",
                 turns: DeviceTurns | None = None, ray: Any = None, observers: list[Observer] | None = None):
        """`name`: the model this engine serves (a server of several models runs one engine
        each); `turns`: the device turns it shares with those engines (None: its own); `ray`:
        the Ray connection they share (a workers.ray.RayConnection its owner closes; None: the
        engine opens its own when an OP runs in mode ray, and closes it when it stops);
        `observers`: subscribers to the request's life beside metrics and logs (observe.py)."""
        self.config = config
        self.name = name
        self.metrics = metrics or EngineMetrics()
        # Metrics and logs first; tracing (server/tracing.py) and tests add theirs.
        self.observers = Observers([MetricsObserver(self.metrics), LogObserver(), *(observers or [])])
        self.policy = Policy.of(config)  # the order of every waiting place (policy.py)
        self.stages: dict[str, OpStage] = {}
        self.consumers = {name: config.consumers(name) for name in config.ops}
        self.entries = [name for name, op in config.ops.items() if REQUEST in op.inputs]
        self.requests: dict[str, Request] = {}
        self.accepting = False
        self._idle = asyncio.Event()
        self.platforms = Platforms(config, turns)  # how workers compute on each device (platforms/)
        self._health_listeners: list[Callable[[bool], None]] = []
        self._serving = False
        self._ray = None  # the Ray connection, when an OP runs in mode: ray
        self._shared_ray = ray

    # -- health ----------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        """True while every OP has a live worker (the engine can finish a request)."""
        return self._serving

    def on_health_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(serving)` on the event loop whenever `serving` flips."""
        self._health_listeners.append(listener)

    def health_changed(self) -> None:
        serving = bool(self.stages) and len(self.stages) == len(self.config.ops) and all(
            stage.supervisor.live > 0 for stage in self.stages.values())
        if serving == self._serving:
            return
        self._serving = serving
        log.log(logging.INFO if serving else logging.WARNING, "engine %s",
                "serving: every OP has a live worker" if serving else
                "not serving: an OP has no live worker; its rows wait for a replacement")
        for listener in self._health_listeners:
            listener(serving)

    async def start(self) -> None:
        self.platforms.open()
        if any(op.mode == "ray" for op in self.config.ops.values()):
            from tessera.server.engine.workers.ray import RayConnection
            self._ray = self._shared_ray or RayConnection(self.config.ray_address)
            await asyncio.get_running_loop().run_in_executor(None, self._ray.open)
        self.stages = {name: OpStage(self, cfg) for name, cfg in self.config.ops.items()}
        await gather_settled(stage.start() for stage in self.stages.values())  # every setup ended
        self.health_changed()
        self.accepting = True
        self._idle.set()
        log.info("engine started: %s", ", ".join(
            f"{n}(x{len(s.workers)}, batch {s.cfg.batch_size})" for n, s in self.stages.items()))

    def submit(self, payload: Any, *, request_id: str | None = None, timeout_s: float | None = None,
               events: bool = False, priority: int = 0,
               trace_context: dict[str, str] | None = None) -> Request:
        """Admit a request or refuse it at once (Overloaded, ShuttingDown, InvalidInput).
        `priority`: lower is sooner (graph.policy); `trace_context`: the caller's W3C
        traceparent/tracestate headers, the parent of the request's spans."""
        tell = self.observers

        def refused(outcome: str) -> None:
            tell.refused(outcome, priority, request_id or "", trace_context)
        if not self.accepting:
            refused("shutting_down")
            raise ShuttingDown("the server is shutting down and admits no new requests")
        try:
            self.policy.check(priority)
        except InvalidInput:
            refused("invalid_input")
            raise
        if not self.policy.admits(priority, len(self.requests), self.config.max_inflight) or any(
                self.stages[e].channel.full for e in self.entries):
            refused("overloaded")
            raise Overloaded(f"the server is at capacity ({len(self.requests)} requests in flight); "
                             "retry later")
        rid = request_id or uuid.uuid4().hex
        if rid in self.requests:
            refused("invalid_input")
            shown = rid if len(rid) <= 64 else rid[:64] + "…"  # never echo unbounded input
            raise InvalidInput(f"request id {shown!r} is already in flight; use a new one per request")
        loop = asyncio.get_running_loop()
        timeout = timeout_s if timeout_s is not None else self.config.default_deadline_ms / 1000
        request = Request(rid, payload, loop.time() + timeout, events)
        request.priority, request.trace_context = priority, trace_context
        request.rank = self.policy.rank(priority, request.created)
        request._engine_cancel = self._cancel
        request.future.add_done_callback(_retrieve)
        self.requests[rid] = request
        self._idle.clear()
        tell.admitted(request)
        request.timer = loop.call_at(request.deadline, self._expire, request, timeout)
        for entry in self.entries:
            self.stages[entry].channel.offer(request, REQUEST, payload)
        return request

    def upcoming(self, op: str) -> int:
        """Requests in flight that have yet to bring their rows to OP `op` (a batch waits for
        them only while there are some: alone, a row never waits)."""
        return sum(1 for request in self.requests.values() if op not in request.stages)

    async def route(self, source: str, request: Request, value: Any) -> None:
        """Hand an OP's output for a request on: to its consumers, or back to the caller."""
        if request.done:
            return
        if source == self.config.output:
            self._finish(request, value)
            return
        for consumer in self.consumers[source]:
            await self.stages[consumer].channel.put(request, source, value)

    def fail(self, request: Request, error: EngineError) -> None:
        if request.done:
            return
        request.future.set_exception(error)
        outcome = _OUTCOMES.get(type(error), "failed")
        self._cleanup(request, True)
        self.observers.failed(request, error, outcome)
        self._idle_if_empty()

    def _finish(self, request: Request, value: Any) -> None:
        timings = [StageTiming(name, 1000 * (s.first_start - s.arrived), 1000 * (s.finished - s.first_start))
                   for name, s in request.stages.items() if s.finished is not None]
        total = 1000 * (time.monotonic() - request.created)
        result = Result(request.id, value, timings, total)
        request.future.set_result(result)
        self._cleanup(request, False)
        self.observers.finished(request, result)
        self._idle_if_empty()

    def _cancel(self, request: Request, error: EngineError | None) -> None:
        self.fail(request, error or Cancelled("the request was cancelled"))

    def _expire(self, request: Request, timeout: float) -> None:
        self.fail(request, DeadlineExceeded(f"the request's deadline of {timeout * 1000:.0f} ms passed"))

    def _cleanup(self, request: Request, failed: bool) -> None:
        if request.timer is not None:
            request.timer.cancel()
        if failed:  # a finished request has already left every channel
            for stage in self.stages.values():
                stage.forget(request)
        self.requests.pop(request.id, None)

    def _idle_if_empty(self) -> None:
        if not self.requests:
            self._idle.set()

    async def drain(self) -> None:
        """Stop admitting and wait until every admitted request has ended (each ends by its
        own deadline at the latest): a replaced or unloaded model's engine, before it stops."""
        self.accepting = False
        await self._idle.wait()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop admitting, let in-flight requests finish within the grace, then stop workers."""
        self.accepting = False
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        if self.requests:  # nothing admitted (a start that failed, an idle server): nothing to wait for
            try:
                await asyncio.wait_for(self.drain(), grace)
            except asyncio.TimeoutError:
                log.warning("shutdown grace of %.1fs over; failing %d requests", grace, len(self.requests))
        for request in list(self.requests.values()):
            self.fail(request, ShuttingDown("the server shut down before the request finished"))
        await asyncio.gather(*(stage.stop() for stage in self.stages.values()))
        self.platforms.close()
        if self._ray is not None and self._ray is not self._shared_ray:
            self._ray.close()
        self._serving = False


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # marks it retrieved: nobody awaiting is not an error
