"""Workers: one OP instance each, with its own state, on its own thread or process.

Thread mode (default) runs the OP off the event loop on a dedicated thread, so torch,
which releases the GIL, computes while the loop keeps serving. Process mode runs the
OP in a child process (spawned, so no forked locks) for OPs whose work holds the GIL.

Thread-mode workers on one device can take turns (`graph.device_turns`): they share
the device's one compute thread, first come first served, so the OPs of a pipeline
compute one at a time with every core, and torch keeps a single OpenMP team per device.
(One team per OP thread oversubscribes a small CPU; libgomp then stops spinning between
parallel regions and every op pays a wake-up: a 4-row sampler step took 40% longer.)
The wait for the turn is measured apart from compute.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable

from tessera.server.engine.op import Op

_CHILD_OP: Op | None = None


def _child_init(cls: type[Op], settings: dict, name: str, device: str) -> None:
    global _CHILD_OP
    op = cls(**settings)
    op.name = name
    op.setup(device)
    _CHILD_OP = op


def _child_process(rows: list) -> list:
    return _CHILD_OP.process(rows)


def _child_ready() -> bool:
    return _CHILD_OP is not None


class Worker:
    """Runs calls on one OP instance; `call` is awaited from the event loop."""

    def __init__(self, cls: type[Op], settings: dict, name: str, device: str, mode: str, index: int,
                 shared: ThreadPoolExecutor | None = None, on_wait: Callable[[float], None] | None = None):
        self.cls, self.settings, self.name = cls, settings, name
        self.device, self.mode, self.index = device, mode, index
        self.shared = shared if mode == "thread" else None  # the device's compute thread
        self.on_wait = on_wait
        self.op: Op | None = None
        self._executor: ThreadPoolExecutor | ProcessPoolExecutor | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        label = f"{self.name}-{self.index}"
        if self.mode == "process":
            self._executor = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=_child_init,
                initargs=(self.cls, self.settings, self.name, self.device))
            await loop.run_in_executor(self._executor, _child_ready)
        else:
            self._executor = self.shared or ThreadPoolExecutor(1, thread_name_prefix=label)
            self.op = self.cls(**self.settings)
            self.op.name = self.name
            await loop.run_in_executor(self._executor, self.op.setup, self.device)

    async def process(self, rows: list) -> list:
        if self.mode == "process":
            return await self.call(_child_process, rows)
        return await self.call(self.op.process, rows)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self.shared is None or self.on_wait is None:
            return await loop.run_in_executor(self._executor, fn, *args)
        submitted = time.monotonic()

        def in_turn() -> Any:
            self.on_wait(time.monotonic() - submitted)
            return fn(*args)

        return await loop.run_in_executor(self._executor, in_turn)

    def others_waiting(self) -> bool:
        """Whether other calls are queued for this worker's device thread (read from it too)."""
        # ThreadPoolExecutor keeps submitted, not yet started calls in _work_queue.
        return self.shared is not None and self.shared._work_queue.qsize() > 0

    def close(self) -> None:
        if self._executor is not None and self._executor is not self.shared:  # the engine owns shared ones
            self._executor.shutdown(wait=False, cancel_futures=True)
