"""The node's turn: one holder at a time across processes, handed to waiters between
steps, and freed by a holder that dies."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

from tessera.server.engine.platforms.turns import NodeTurn


def _wait_for(condition, what: str, limit_s: float = 30.0) -> None:
    """Poll a condition that has no event of its own (another process's flock), bounded: a
    waiter queues inside `acquire`, past any event it could set first."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        os.sched_yield()  # no sleep: give the core to the thread or process being waited for


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


def test_pass_on_lets_the_waiter_compute_between_two_steps(tmp_path, monkeypatch):
    # pass_on waits a bounded while (HANDOFF_S, 50 ms) for the woken waiter to take the turn,
    # then takes it back. How soon a loaded machine schedules the waiter is not this test's
    # subject, so the bound here is long; the steps below synchronise on events.
    monkeypatch.setattr(sys.modules[NodeTurn.__module__], "HANDOFF_S", 60.0)
    a, b = NodeTurn("cpu", tmp_path), NodeTurn("cpu", tmp_path)
    order: list[str] = []
    b_computing, b_may_finish, a_back = threading.Event(), threading.Event(), threading.Event()

    def waiter():
        with b:
            b_computing.set()
            assert b_may_finish.wait(60)
            order.append("b computes")

    def holder_between_two_steps():
        assert a.pass_on()
        order.append("a's next step")
        a_back.set()

    a.acquire()
    t = threading.Thread(target=waiter)
    t.start()
    _wait_for(a.others_waiting, "b to queue")
    passer = threading.Thread(target=holder_between_two_steps)
    passer.start()
    assert b_computing.wait(60)       # a handed b the turn between two steps...
    assert not a.held and not a_back.is_set()  # ...and waits for it back
    b_may_finish.set()
    assert a_back.wait(60)
    passer.join(60)
    t.join(60)
    assert order == ["b computes", "a's next step"] and a.held
    a.release()
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
    from tessera.server.engine.platforms.cpu import CpuPlan
    from tessera.server.engine.workers.base import WorkerSpec
    from tessera.server.engine.workers.thread import ThreadWorker
    from tests.server.engine import toy_ops

    before = _turn_files_open()
    worker = ThreadWorker(WorkerSpec(toy_ops.Echo, {}, "echo", "cpu", 0, compute=CpuPlan(turns=True)))
    await worker.start()
    assert worker.host.device.turn is not None and _turn_files_open() == before + 2
    assert await worker.process([1, 2]) == [1, 2]
    await worker.close()
    assert _turn_files_open() == before
