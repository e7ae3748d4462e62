"""The worker side of a call, the same in every placement: one OP instance, its setup,
its batch calls and its stepping calls. A thread worker calls it on its compute thread,
a process worker in its child, a Ray worker in its actor.
"""
from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from typing import Any

from tessera.server.engine.op import Op, StepResult, SteppingOp
from tessera.server.engine.workers.base import StepCall, StepReply, WorkerSpec
from tessera.server.engine.workers.threads import ThreadPolicy, computing, node_cores
from tessera.server.engine.workers.turns import open_turn

log = logging.getLogger("tessera.engine")


class OpHost:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.op: Op | None = None
        self._keys: set[Hashable] = set()  # rows in a stepping OP's running batch
        computes = spec.device == "cpu" and spec.op_class.uses_device
        self.computing = computing if computes else nullcontext  # counted among the calls sharing the cores
        # The node's turn, shared with the other processes' workers (see turns.py): while
        # it holds the turn a worker may use every core of the node.
        self.turn = open_turn(spec.device) if computes and spec.turns else None
        # How many threads each call computes with (CPU OPs that compute; see threads.py).
        # An OP that does not compute on the device (tokenize) runs torch on one thread, so
        # its thread never opens an OpenMP team beside the compute thread's.
        if computes:
            most = node_cores() if self.turn else (None if spec.team else 1)
            self.threads = ThreadPolicy(spec.threads, most=most)
        else:
            self.threads = ThreadPolicy(1) if spec.device == "cpu" else None

    def setup(self) -> None:
        op = self.spec.op_class(**self.spec.settings)
        op.name = self.spec.name
        if isinstance(op, SteppingOp):
            op.capacity = self.spec.capacity
        op.setup(self.spec.device)
        if op.thread_exact and self.threads is not None and self.threads.setting == "auto":
            # Its outputs change with the thread count (a convolution that splits its sums
            # between threads): one count always, so the same request gives the same bytes.
            self.threads = ThreadPolicy(self.threads.most, most=self.threads.most)
        self.op, self._keys = op, set()

    def close(self) -> None:
        """Free what the host holds outside the OP (the node turn's files); no call may run."""
        if self.turn is not None:
            self.turn.close()
            self.turn = None

    def process(self, rows: list[Any]) -> list[Any]:
        policy = self.threads
        with self.turn or nullcontext(), self.computing():
            if policy is None:
                return self.op.process(rows)
            n = policy.choose("batch", len(rows))
            start = time.perf_counter()
            out = self.op.process(rows)
            policy.record("batch", len(rows), n, time.perf_counter() - start, units=len(rows))
        return out

    def step(self, call: StepCall, stop: Callable[[], bool]) -> StepReply:
        """Evict, admit, then step until the budget is spent, `stop()` says so, or a row
        finishes, fails or carries a preview (each of those the event loop must see)."""
        op, reply, turn = self.op, StepReply(), self.turn
        try:
            with turn or nullcontext(), self.computing():
                gone = [k for k in call.evict if k in self._keys]
                rows = len(self._keys) - len(gone) + len(call.admit)
                policy, n = self.threads, 0
                if policy is not None and rows:  # admission's prefill runs with the steps' count
                    n = reply.threads = policy.choose("step", rows)
                if gone:
                    op.evict(gone)
                    self._keys.difference_update(gone)
                if call.admit:
                    reply.refused = dict(op.admit(call.admit) or {})
                    self._keys.update(r.key for r in call.admit if r.key not in reply.refused)
                result, spent = reply.result, 0.0
                while reply.steps < call.budget and op.active:
                    if reply.steps and turn is not None:
                        turn.pass_on()  # another process's call goes between two steps
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
                    if n and reply.steps == 1 and policy.gives_up("step", rows, n, took):
                        break  # a try that clearly lost its first step costs no more steps
                    if n and policy.crowded(n):
                        break  # another call started computing beside this one: share the cores
                if n and reply.steps:
                    policy.record("step", rows, n, spent, units=reply.steps)
        except Exception as exc:  # noqa: BLE001 - the loop re-runs the rows in smaller groups
            reply.error = exc
            reply.result = StepResult()
            self._reset()
        return reply

    def _reset(self) -> None:
        """After a failed step the running batch is unknown: drop it (a new OP if need be)."""
        keys, self._keys = list(self._keys), set()
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
