"""The worker side of a call, the same in every placement: one OP instance, its setup,
its batch calls and its stepping calls. A thread worker calls it on its compute thread,
a process worker in its child, a Ray worker in its actor.
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import time
from collections.abc import Callable, Hashable
from typing import Any

from tessera.server.engine.op import Op, StepResult, SteppingOp
from tessera.server.engine.workers.base import SpanRecord, StepCall, StepReply, WorkerSpec

log = logging.getLogger("tessera.engine")


class OpHost:
    def __init__(self, spec: WorkerSpec, others_waiting: Callable[[], int] | None = None):
        """`others_waiting`: how many calls wait for the device's turn this worker's calls take
        (a thread worker sharing the device's compute thread), for the platform to read."""
        from tessera.server.engine.platforms import host_for  # the platforms build on the workers
        self.spec = spec
        self.op: Op | None = None
        self._keys: set[Hashable] = set()  # rows in a stepping OP's running batch
        self._traces: dict[Hashable, dict[str, str]] = {}  # running rows' trace context (tracing on)
        self.device = host_for(spec, others_waiting)  # how calls compute on the spec's device (platforms/)
        self.last_spans: list[SpanRecord] = []  # the last batch call's, for the worker to hand back

    def setup(self) -> None:
        op = self.spec.op_class(**self.spec.settings)
        op.name = self.spec.name
        if isinstance(op, SteppingOp):
            op.capacity = self.spec.capacity
        op.setup(self.spec.device)
        self.device.adopt(op)
        self.op, self._keys, self._traces = op, set(), {}

    def close(self) -> None:
        """Free what the host holds: the node turn's files, the OP's own (`teardown`); no call
        may run."""
        self.device.close()
        op, self.op = self.op, None
        if op is not None:
            try:
                op.teardown()
            except Exception:  # noqa: BLE001 - closing goes on; what it held is freed with it
                log.exception("%s: teardown failed", self.spec.label)

    def process(self, rows: list[Any], traces: list[dict[str, str] | None] | None = None) -> list[Any]:
        device = self.device
        self.last_spans = []
        with device.hold():
            n = device.choose("batch", len(rows))
            start, began = time.perf_counter(), time.time_ns()
            out = self.op.process(rows)
            if n:
                device.record("batch", len(rows), n, time.perf_counter() - start, units=len(rows))
        if traces:
            self.last_spans = self._spans(traces, began, {"tessera.rows": len(rows), "tessera.threads": n})
        return out

    def step(self, call: StepCall, stop: Callable[[], bool]) -> StepReply:
        """Evict, admit, then step until the budget is spent, or a row finishes, fails or carries
        a preview (each of those the event loop must see), or `stop()` says so (the event loop's
        reasons: StepDriver), or the platform does (the device's reasons: keep_stepping)."""
        op, reply, device = self.op, StepReply(), self.device
        try:
            with device.hold():
                gone = [k for k in call.evict if k in self._keys]
                rows = len(self._keys) - len(gone) + len(call.admit)
                n = 0
                if rows:  # admission's prefill runs with the steps' count
                    n = reply.threads = device.choose("step", rows)
                if gone:
                    op.evict(gone)
                    self._keys.difference_update(gone)
                if call.admit:
                    reply.refused = dict(op.admit(call.admit) or {})
                    self._keys.update(r.key for r in call.admit if r.key not in reply.refused)
                    self._traces.update((r.key, r.trace) for r in call.admit
                                        if r.trace is not None and r.key not in reply.refused)
                traced = [self._traces[k] for k in self._keys if k in self._traces]
                began = time.time_ns()
                result, spent = reply.result, 0.0
                while reply.steps < call.budget and op.active:
                    if reply.steps:
                        device.between_steps()
                    start = time.perf_counter()
                    more = op.step()
                    took = time.perf_counter() - start
                    spent += took
                    reply.steps += 1
                    result.progress.update(more.progress)
                    result.finished.update(more.finished)
                    self._keys.difference_update(more.finished)
                    if (reply.refused or result.finished or stop()
                            or any(p.preview is not None for p in more.progress.values())):
                        break
                    if not device.keep_stepping(rows, n, reply.steps, took):
                        break
                if n and reply.steps:
                    device.record("step", rows, n, spent, units=reply.steps)
            if traced:
                reply.spans = self._spans(traced, began, {"tessera.rows": rows, "tessera.threads": n,
                                                          "tessera.steps": reply.steps,
                                                          "tessera.admitted": len(call.admit),
                                                          "tessera.evicted": len(gone)})
            for key in gone:
                self._traces.pop(key, None)
            for key in result.finished:
                self._traces.pop(key, None)
        except Exception as exc:  # noqa: BLE001 - the loop re-runs the rows in smaller groups
            reply.error = exc
            reply.result = StepResult()
            self._reset()
        return reply

    def _spans(self, traces: list[dict[str, str] | None], began: int, attributes: dict[str, Any]) -> list[SpanRecord]:
        """One span of this call for each traced request in it (rows of one request share one)."""
        parents = {c["traceparent"]: c for c in traces if c and "traceparent" in c}
        end = time.time_ns()
        attributes = {**attributes, "host.name": _HOST, "process.pid": os.getpid(),
                      "tessera.device": self.spec.device, "tessera.worker.index": self.spec.index}
        return [SpanRecord(f"{self.spec.name} compute", parent, began, end, attributes)
                for parent in parents.values()]

    def _reset(self) -> None:
        """After a failed step the running batch is unknown: drop it (a new OP if need be)."""
        keys, self._keys = list(self._keys), set()
        self._traces = {}
        try:
            if keys:
                self.op.evict(keys)
            if not self.op.active:
                return
        except Exception:  # noqa: BLE001 - replaced below
            pass
        log.warning("%s: could not drop its running batch after a failed step; setting it up again",
                    self.spec.label)
        self.setup()


_HOST = socket.gethostname()  # the node a span computed on


def portable(value: Any) -> Any:
    """An exception that survives pickling, for replies that cross a process boundary."""
    if isinstance(value, BaseException):
        try:
            pickle.loads(pickle.dumps(value))
            return value
        except Exception:  # noqa: BLE001 - replaced by a plain one with the same words
            return RuntimeError(f"{type(value).__name__}: {value}")
    return value


def portable_reply(reply: StepReply) -> StepReply:
    reply.refused = {k: portable(v) for k, v in reply.refused.items()}
    reply.result.finished = {k: portable(v) for k, v in reply.result.finished.items()}
    reply.error = portable(reply.error) if reply.error is not None else None
    return reply
