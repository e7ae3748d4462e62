"""Stepping progress: what a stream is told, and when the next report falls due.

A request that streams gets a Progress event for a stepping OP at most every
`graph.progress_interval_ms`; its first step, its last and any step with a preview
always go out. The scheduler asks `next_due` before a call so that the call returns
(stop_early) when a report falls due, instead of the worker reading request state.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tessera.server.engine.op import StepResult
from tessera.server.engine.request import Progress, Request, StageState

if TYPE_CHECKING:
    from tessera.server.engine.stage import RowTask


class ProgressReporter:
    def __init__(self, op: str, interval_s: float):
        self.op = op
        self.interval = interval_s

    def next_due(self, tasks: list[RowTask]) -> float | None:
        """The monotonic time the first of these rows' requests is owed a report (None: never)."""
        due = None
        for task in tasks:
            if task.request.events is None or task.request.done:
                continue
            sent = task.request.stages[self.op].progress_sent
            at = 0.0 if sent is None else sent + self.interval
            due = at if due is None else min(due, at)
        return due

    def _interval_passed(self, state: StageState, now: float) -> bool:
        return state.progress_sent is None or now - state.progress_sent >= self.interval

    def report(self, live: dict, result: StepResult) -> None:
        touched: dict[str, Request] = {}
        previews: set[str] = set()
        for key, prog in result.progress.items():
            task = live.get(key)
            if task is None or task.request.events is None or task.request.done:
                continue
            state = task.request.stages[self.op]
            if state.progress is None:
                state.progress = {}
            state.progress[task.index] = prog
            touched[task.request.id] = task.request
            if prog.preview is not None:
                previews.add(task.request.id)
        now = time.monotonic()
        for request in touched.values():
            state = request.stages[self.op]
            rows = len(state.outputs)
            per_row = max(p.total for p in state.progress.values())
            done = sum(p.completed for p in state.progress.values()) + per_row * sum(
                1 for i in range(rows) if i not in state.progress and state.outputs[i] is not None)
            if not (done >= per_row * rows or request.id in previews or self._interval_passed(state, now)):
                continue
            state.progress_sent = now
            preview = state.progress.get(0).preview if 0 in state.progress else None
            request.events.put_nowait(Progress(request.id, self.op, done, per_row * rows, preview))
