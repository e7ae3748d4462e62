"""Supervision: an OP's live workers counted, the lost ones replaced, health told.

A worker is lost when it dies (a killed process, a lost Ray actor or node) or is
abandoned after a call ran past `timeout_ms`. Its OP's stage puts the rows it held back
at the front of the queue for the OP's live workers (a stepping row restarts from its
seed) and asks the supervisor to replace it: `start()` again, retried with a growing
pause until it succeeds (a Ray cluster with no room yet just keeps the actor pending).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tessera.server.engine.observe import Observer
from tessera.server.engine.workers.base import Worker

log = logging.getLogger("tessera.engine")

_FIRST_PAUSE_S, _LONGEST_PAUSE_S = 0.2, 10.0


class Supervisor:
    def __init__(self, op: str, tell: Observer, on_change: Callable[[], None]):
        self.op = op
        self.live = 0
        self._on_change = on_change
        self._tell = tell  # the engine's observers: metrics and logs hear of workers there

    def up(self, worker: Worker) -> None:
        self.live += 1
        self._tell.worker_up(self.op, worker, self.live)
        self._on_change()

    def down(self, worker: Worker, rows: int) -> None:
        self.live -= 1
        self._tell.worker_lost(self.op, worker, rows, self.live)
        self._on_change()

    def close(self) -> None:
        """The OP stopped: its workers are no longer live (a replaced model's old version leaves
        the model's gauge to the new one's)."""
        self._tell.workers_closed(self.op, self.live)
        self.live = 0

    async def replace(self, worker: Worker) -> None:
        pause = _FIRST_PAUSE_S
        while True:
            try:
                await worker.start()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried: the OP must get its worker back
                log.warning("%s: replacing worker %d failed (%s: %s); retrying in %.1fs",
                            self.op, worker.index, type(exc).__name__, exc, pause)
                await asyncio.sleep(pause)
                pause = min(2 * pause, _LONGEST_PAUSE_S)
        self._tell.worker_replaced(self.op, worker)
        self.up(worker)
