"""Batch OPs: batch collection and the calls that run the batches.

Batch collection is one deadline loop on a monotonic clock (`OpStage.fill_or_timeout`):
a worker takes up to `batch_size` rows, waiting at most `batch_timeout_ms` after the
oldest row arrived for a fuller batch. A batch that raises is split in halves until the
rows at fault are found, so their batch-mates live; a call past `timeout_ms` fails its
rows (or retries them, with `retry`) and its worker is replaced, not waited for.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from tessera.server.engine.errors import InvalidInput, OpFailed
from tessera.server.engine.observe import Call
from tessera.server.engine.workers import Worker, WorkerLost

if TYPE_CHECKING:
    from tessera.server.engine.request import Request
    from tessera.server.engine.stage import OpStage, RowTask


class BatchRunner:
    def __init__(self, stage: OpStage):
        self.stage = stage

    def rows_arrived(self) -> None:
        pass  # a batch call is never cut short

    def request_left(self, request: Request) -> None:
        pass

    async def run(self, worker: Worker) -> None:
        stage, size = self.stage, self.stage.cfg.batch_size
        while True:
            await stage.wait_for_work(worker)
            await stage.fill_or_timeout(worker, size)
            batch = stage.take(size)
            if batch:
                await self._execute(worker, batch)
            if worker.lost.is_set():
                raise stage.lost_with(worker, [])

    async def _execute(self, worker: Worker, batch: list[RowTask]) -> None:
        stage = self.stage
        stage.mark_start(worker, batch, time.monotonic())
        outcomes = await self._isolate(worker, batch)
        back = []
        for task, out in zip(batch, outcomes):
            if task.request.done:
                continue
            if isinstance(out, WorkerLost):
                back.append(task)
            elif isinstance(out, BaseException):
                if not isinstance(out, InvalidInput) and task.attempts < stage.cfg.retry:
                    task.attempts += 1
                    back.append(task)
                else:
                    stage.fail_row(task, out)
            else:
                await stage.row_done(task, out)
        if worker.lost.is_set():
            raise stage.lost_with(worker, back)
        if back:
            stage.requeue(back)

    async def _isolate(self, worker: Worker, tasks: list[RowTask]) -> list:
        """Run a batch; if it raises, split it to find the rows at fault (batch-mates live).
        Rows the worker could not run because it was lost come back as WorkerLost."""
        if worker.lost.is_set():
            return [WorkerLost(worker.spec.label)] * len(tasks)
        stage = self.stage
        values = [t.value for t in tasks]
        traces = [t.trace for t in tasks] if any(t.trace is not None for t in tasks) else None
        start, threads = time.monotonic(), 0
        try:
            out = await stage.timed(worker, worker.process(values, traces=traces,
                                                                  rank=min(t.rank for t in tasks)))
            threads = worker.last_threads
            if not isinstance(out, list) or len(out) != len(values):
                raise OpFailed(stage.name, f"process() returned {len(out) if isinstance(out, list) else type(out).__name__}"
                                           f" results for {len(values)} rows")
            return out
        except WorkerLost as exc:
            return [exc] * len(values)
        except Exception as exc:  # noqa: BLE001 - isolated below, reported per row
            if len(values) == 1 or isinstance(exc, (asyncio.TimeoutError, OpFailed)):
                return [exc] * len(values)
            half = len(tasks) // 2
            return await self._isolate(worker, tasks[:half]) + await self._isolate(worker, tasks[half:])
        finally:
            stage.tell.computed(Call(stage.name, worker, tasks, start, time.monotonic() - start,
                                     threads=threads, spans=worker.last_spans if traces else ()))
