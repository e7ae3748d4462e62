"""Device turns across processes: one computation at a time on a node's CPU, whoever runs it.

`graph.device_turns` makes the thread workers of one server share one compute thread per
device. Process workers and Ray actors are other processes on the same cores: without a
turn they compute at the same time as the front end and each other, and a small CPU is
then oversubscribed (every OpenMP team waits at its barriers for threads the others
preempted). So every CPU worker of such a graph takes the node's turn around each batch
call and each step, and computes with all of the node's cores while it holds it. Between
steps a stepping call hands the turn to anyone waiting and queues again, so a decode call
never waits for a sampler's whole multi-step call.

The turn is an exclusive `flock` on a file in /dev/shm (or the temporary directory), so a
worker that dies holding it (kill -9, a lost actor) frees it with its process. A waiter
holds a shared lock on a second file while it waits; the holder tests that lock to see
whether anyone waits. Both are per open file, so two workers in one process are two
parties, as two processes are.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from pathlib import Path

log = logging.getLogger("tessera.engine")

HANDOFF_S = 0.05  # the longest a holder waits for a woken waiter to take the turn


def _folder() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class NodeTurn:
    """The turn of `device` on this machine, shared by every process that opens it."""

    def __init__(self, device: str, folder: Path | None = None):
        stem = "tessera-turn-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device)
        folder = folder or _folder()
        self._turn = os.open(folder / f"{stem}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
        self._queue = os.open(folder / f"{stem}.wait", os.O_RDONLY | os.O_CREAT, 0o666)
        self.held = False

    def acquire(self) -> None:
        fcntl.flock(self._queue, fcntl.LOCK_SH)          # "I am waiting"
        try:
            fcntl.flock(self._turn, fcntl.LOCK_EX)
        finally:
            fcntl.flock(self._queue, fcntl.LOCK_UN)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    def others_waiting(self) -> bool:
        try:
            fcntl.flock(self._queue, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._queue, fcntl.LOCK_UN)
        return False

    def pass_on(self) -> bool:
        """Between two steps: if anyone waits, let them compute first, then take the turn
        again. True if it was passed on."""
        if not self.others_waiting():
            return False
        self.release()
        deadline = time.monotonic() + HANDOFF_S
        while self.others_waiting() and time.monotonic() < deadline:
            time.sleep(0.0002)  # the woken waiter takes the turn within its next time slice
        self.acquire()
        return True

    def __enter__(self) -> NodeTurn:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def close(self) -> None:
        self.release()
        for fd in (self._turn, self._queue):
            os.close(fd)


def open_turn(device: str) -> NodeTurn | None:
    """The node's turn for a CPU worker; None (and one warning) where it cannot be opened."""
    try:
        return NodeTurn(device)
    except OSError as exc:
        log.warning("device turns across processes are off for %s: %s", device, exc)
        return None
