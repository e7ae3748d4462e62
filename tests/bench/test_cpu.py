"""The bench's per-thread CPU accounting of a server's process tree (bench/cpu.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from tessera.bench.cpu import cpu_line, cpu_split, descendants, thread_cpu


def test_the_tree_holds_the_process_and_its_childrens_children():
    # A child that starts a grandchild and then waits on stdin: both exist until we close it.
    code = ("import subprocess, sys; g = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
            " stdin=subprocess.PIPE); print(g.pid, flush=True); sys.stdin.read(); g.stdin.close(); g.wait()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        tree = descendants(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree and grandchild in tree
        assert descendants(child.pid) == [child.pid, grandchild]
    finally:
        child.stdin.close()
        child.wait()


def test_a_busy_thread_shows_its_own_cpu_time_and_a_blocked_one_less():
    # The reading, not the machine, is under test: work until this thread's reading has moved
    # by a few clock ticks (bounded), then compare it with a thread blocked on an event.
    started, idle = threading.Event(), threading.Event()
    sleeper = threading.Thread(target=lambda: (started.set(), idle.wait()), name="idle")
    sleeper.start()
    try:
        assert started.wait(30)
        before = thread_cpu([os.getpid()])
        me = f"{os.getpid()}/{threading.get_native_id()}"
        other = f"{os.getpid()}/{sleeper.native_id}"
        deadline = time.monotonic() + 60
        while thread_cpu([os.getpid()])[me][1] - before[me][1] < 0.05 and time.monotonic() < deadline:
            sum(range(10_000))
        after = thread_cpu([os.getpid()])
    finally:
        idle.set()
        sleeper.join()
    mine, its = after[me][1] - before[me][1], after[other][1] - before[other][1]
    assert mine > 0, "this thread's work never showed in /proc"
    assert its < mine  # attributed per thread: the busy thread's time is not the blocked one's
    split = cpu_split(before, after, wall_s=mine, top=100)  # over the time this thread worked
    shown = [t["thread"] for t in split["threads"]]
    assert me in shown and (other not in shown or shown.index(me) < shown.index(other))


def test_the_split_ranks_threads_by_their_share_of_a_core_and_counts_cores():
    before = {"1/1": ("python", 1.0), "1/2": ("python", 0.5), "2/7": ("uvicorn", 0.0)}
    after = {"1/1": ("python", 2.9), "1/2": ("python", 1.5), "2/7": ("uvicorn", 0.005), "1/9": ("new", 0.2)}
    split = cpu_split(before, after, wall_s=2.0)
    assert split["cores"] == (1.9 + 1.0 + 0.005 + 0.2) / 2.0
    assert [(t["thread"], round(t["core_share"], 3)) for t in split["threads"]] == [
        ("1/1", 0.95), ("1/2", 0.5), ("1/9", 0.1)]  # uvicorn's 0.25% is under the 1% shown
    assert cpu_line(split) == "1.55 cores: python 95%, python 50%, new 10%"
