"""Process workers: the OP runs in a child process of its own (spawned, so no forked
locks), for OPs whose work holds the GIL. Batch and stepping OPs alike: the child owns
the OP (and a stepping OP's running batch) and answers one call at a time over a pipe.

The child's death is noticed at once, in a call or between calls: the event loop watches
its process sentinel. A stepping call's stop flag is a multiprocessing Event the child
polls between steps.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import queue
import signal
import threading
from typing import Any

from tessera.server.engine.workers.base import StepCall, StepReply, Worker, WorkerLost, WorkerSpec
from tessera.server.engine.workers.host import OpHost, portable, portable_reply

log = logging.getLogger("tessera.engine")


def _child_main(conn, stop, spec: WorkerSpec) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C drains through the parent
    host = OpHost(spec)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent went away
        try:
            kind, payload = pickle.loads(data)
            if kind == "setup":
                host.setup()
                reply = ("ok", None)
            elif kind == "process":
                rows, traces = payload
                out = [portable(v) for v in host.process(rows, traces)]
                reply = ("ok", (out, host.last_spans))
            elif kind == "step":
                reply = ("ok", portable_reply(host.step(payload, stop.is_set)))
            else:
                reply = ("err", RuntimeError(f"unknown call {kind!r}"))
        except Exception as exc:  # noqa: BLE001 - handed to the parent
            reply = ("err", portable(exc))
        try:
            out = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result fails the call, not the child
            out = pickle.dumps(("err", RuntimeError(f"the result could not be pickled: {exc}")))
        conn.send_bytes(out)


class ProcessWorker(Worker):
    placement = "process"

    def __init__(self, spec: WorkerSpec):
        super().__init__(spec)
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._conn = None
        self._stop = None
        self._pending: asyncio.Future | None = None
        self._replies: queue.SimpleQueue | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        await self.close()
        loop = asyncio.get_running_loop()
        self._conn, child = self._ctx.Pipe(duplex=True)
        self._stop = self._ctx.Event()
        self._proc = self._ctx.Process(target=_child_main, args=(child, self._stop, self.spec),
                                       name=f"tessera-{self.spec.label}", daemon=True)
        self._proc.start()
        child.close()
        proc, conn = self._proc, self._conn
        loop.add_reader(proc.sentinel, self._on_exit, proc)
        # Replies are read whole by a thread of their own: an event-loop reader would make the
        # socket non-blocking (uvloop does), and a reply larger than its buffer (a decode
        # call's images) then arrived in parts that recv_bytes could not wait for.
        self._replies = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, args=(conn, self._replies, loop), daemon=True,
                                        name=f"tessera-{self.spec.label}-replies")
        self._reader.start()
        self.lost.clear()
        await self._request("setup", None)

    async def process(self, rows: list[Any], traces: list[dict[str, str] | None] | None = None,
                      rank: tuple | None = None) -> list[Any]:
        out, self.last_spans = await self._request("process", (rows, traces))
        return out

    async def step(self, call: StepCall) -> StepReply:
        self._stop.clear()
        return await self._request("step", call)

    def stop_early(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def abandon(self) -> None:
        """A call ran past timeout_ms: the child is killed, and the sentinel replaces it."""
        if self._proc is not None and self._proc.is_alive():
            log.warning("%s: a call ran past its timeout; killing pid %d", self.spec.label, self._proc.pid)
            self._proc.kill()
        self._set_lost()

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        asyncio.get_running_loop().remove_reader(proc.sentinel)
        if proc.is_alive():
            proc.kill()
        await asyncio.get_running_loop().run_in_executor(None, proc.join, 5)
        self._conn.close()

    # -- the pipe and the sentinel -------------------------------------------------------------
    async def _request(self, kind: str, payload: Any) -> Any:
        if self.lost.is_set() or self._proc is None:
            raise WorkerLost(f"{self.spec.label} is not running")
        future = asyncio.get_running_loop().create_future()
        self._pending = future
        try:
            self._conn.send_bytes(pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            self._lose(f"could not reach pid {self._proc.pid}")
        status, value = await future
        if status == "err":
            raise value
        return value

    def _read(self, conn, replies: queue.SimpleQueue, loop: asyncio.AbstractEventLoop) -> None:
        """On the reader thread: each reply, whole, handed to the loop; ends with the pipe."""
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the child ended or the pipe closed: the sentinel says why
            replies.put((conn, data))
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed
                return

    def _drain(self) -> None:
        while True:
            try:
                conn, data = self._replies.get_nowait()
            except queue.Empty:
                return
            if conn is not self._conn:
                continue  # a reply of a worker already replaced
            future, self._pending = self._pending, None
            if future is not None and not future.done():
                future.set_result(pickle.loads(data))

    def _on_exit(self, proc) -> None:
        if proc is not self._proc:
            return
        proc.join(0)
        if self._reader is not None:  # a reply written whole just before the end still counts
            self._reader.join(timeout=5)
            self._drain()
        asyncio.get_running_loop().remove_reader(proc.sentinel)
        self._lose(f"pid {proc.pid} exited with code {proc.exitcode}")

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            log.warning("%s: worker lost: %s", self.spec.label, why)
        self._set_lost()
        future, self._pending = self._pending, None
        if future is not None and not future.done():
            future.set_exception(WorkerLost(f"{self.spec.label}: {why}"))

