"""The node's turn: one holder at a time across processes, handed to waiters between
steps, and freed by a holder that dies."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

from tessera.server.engine.workers.turns import NodeTurn


def _wait_for(condition, what: str, limit_s: float = 30.0) -> None:
    """Poll a condition that has no event of its own (another process's lock), bounded."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"


def test_one_holder_at_a_time_and_the_holder_sees_the_waiter(tmp_path):
    a, b = NodeTurn("cpu", tmp_path), NodeTurn("cpu", tmp_path)
    a.acquire()
    assert not a.others_waiting()
    got = threading.Event()

    def second():
        with b:
            got.set()

    t = threading.Thread(target=second)
    t.start()
    _wait_for(a.others_waiting, "b to queue")
    assert not got.is_set()            # b waits while a holds the turn
    a.release()
    assert got.wait(30)
    t.join(30)
    assert not a.others_waiting()


def test_pass_on_lets_the_waiter_compute_between_two_steps(tmp_path):
    a, b = NodeTurn("cpu", tmp_path), NodeTurn("cpu", tmp_path)
    order: list[str] = []
    a.acquire()
    t = threading.Thread(target=lambda: (b.acquire(), order.append("b computes"), b.release()))
    t.start()
    _wait_for(a.others_waiting, "b to queue")
    assert a.pass_on()
    order.append("a's next step")
    a.release()
    t.join(30)
    assert order == ["b computes", "a's next step"]
    a.acquire()
    assert not a.pass_on()             # nobody waits: the holder keeps its turn
    a.release()


def _hold_forever(folder, ready) -> None:
    NodeTurn("cpu", folder).acquire()
    ready.set()
    threading.Event().wait()


def test_a_holder_killed_with_sigkill_frees_the_turn(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_forever, args=(tmp_path, ready), daemon=True)
    child.start()
    assert ready.wait(60)
    mine = NodeTurn("cpu", tmp_path)
    got = threading.Event()
    t = threading.Thread(target=lambda: (mine.acquire(), got.set()), daemon=True)
    t.start()
    observer = NodeTurn("cpu", tmp_path)
    _wait_for(observer.others_waiting, "the parent to queue")
    assert not got.is_set()
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert got.wait(30)
    mine.release()


def test_devices_have_separate_turns(tmp_path):
    cpu, gpu = NodeTurn("cpu", tmp_path), NodeTurn("cuda:0", tmp_path)
    with cpu:
        with gpu:                      # would block forever if they were one lock
            assert cpu.held and gpu.held


def _turn_files_open() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "tessera-turn-" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used, closed since
            pass
    return count


async def test_a_thread_worker_closes_its_turn_files_when_it_closes():
    from tessera.server.engine.workers.base import WorkerSpec
    from tessera.server.engine.workers.thread import ThreadWorker
    from tests.server.engine import toy_ops

    before = _turn_files_open()
    worker = ThreadWorker(WorkerSpec(toy_ops.Echo, {}, "echo", "cpu", 0, turns=True))
    await worker.start()
    assert worker.host.turn is not None and _turn_files_open() == before + 2
    assert await worker.process([1, 2]) == [1, 2]
    await worker.close()
    assert _turn_files_open() == before
