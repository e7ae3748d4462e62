"""Process workers: batch and stepping OPs in a child process, and what happens when one
is killed (kill -9): noticed at once, its rows re-run on a live worker, replaced, health
NOT_SERVING while the OP has none and SERVING after, and every request still answered."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tessera.server.engine import GraphConfig, run
from tests.server.engine.helpers import T, chain, running
from tests.server.engine.toy_ops import StepPipe

ENOUGH = 10_000  # steps: more than every test here takes, reruns included


@pytest.fixture
def steps(tmp_path):
    pipe = StepPipe(str(tmp_path / "steps"))
    yield pipe
    pipe.close()


def counting(steps: StepPipe, concurrency: int = 1) -> GraphConfig:
    return chain(("count", "PipePacedCounter", {"batch_size": 4, "mode": "process", "concurrency": concurrency,
                                                "settings": {"pace_fifo": steps.path}}), progress_interval_ms=0)


def sample_value(engine, name, **labels):
    return engine.metrics.registry.get_sample_value(name, labels)


def test_replies_larger_than_the_pipe_buffer_arrive_whole():
    """A decode call's images are a reply of megabytes: the parent waits for all of it, in
    both directions. On the server's own loop (uvloop, which makes a socket it watches
    non-blocking) a reply read in parts once hung its request forever."""
    config = chain(("big", "Large", {"mode": "process", "batch_size": 4}),
                   ("echo", "Echo", {"mode": "process"}))
    sizes = [3 << 20, 256, 1 << 20, 5 << 20]

    async def main():
        async with running(config) as engine:
            return await asyncio.wait_for(asyncio.gather(*(engine.submit(n).result() for n in sizes)), 120)

    results = run(main())  # the server's runner: uvloop where installed, as `tessera serve`
    assert [len(r.value) for r in results] == sizes
    assert all(r.value == bytes(range(256)) * (len(r.value) // 256) for r in results)


async def test_batch_and_stepping_ops_run_in_child_processes():
    config = GraphConfig.from_dict({"output": "join", "ops": {
        "pid": {"type": T + "Pid", "inputs": ["request"], "mode": "process"},
        "count": {"type": T + "Counter", "inputs": ["request"], "mode": "process", "batch_size": 4},
        "join": {"type": T + "Echo", "inputs": ["pid", "count"]},
    }})
    async with running(config) as engine:
        results = await asyncio.gather(*(engine.submit(n).result() for n in (3, 5, 7)))
        child = engine.stages["pid"].workers[0].pid
    assert child != os.getpid()
    assert [r.value["pid"] for r in results] == [child] * 3
    assert [r.value["count"]["finished_at"] - r.value["count"]["admitted_at"] for r in results] == [3, 5, 7]


async def test_a_killed_stepping_worker_is_replaced_and_its_rows_rerun_from_the_start(steps):
    health: list[bool] = []
    steps.allow(1)  # the child takes one step, then holds its running batch
    async with running(counting(steps)) as engine:
        engine.on_health_change(health.append)
        watched = engine.submit(30, events=True)
        others = [engine.submit(n) for n in (20, 25, 40)]
        stream = watched.stream()
        await stream.__anext__()  # a step ran: the rows are in the child's running batch
        worker = engine.stages["count"].workers[0]
        first_pid = worker.pid
        os.kill(first_pid, signal.SIGKILL)
        steps.allow(ENOUGH)  # for the replacement
        results = [await r.result() for r in (watched, *others)]
        assert worker.pid != first_pid
        assert sample_value(engine, "tessera_op_worker_restarts_total", op="count") == 1
        assert sample_value(engine, "tessera_op_rows_retried_total", op="count") >= 1
        assert sample_value(engine, "tessera_op_live_workers", op="count") == 1
        assert engine.serving
    for n, result in zip((30, 20, 25, 40), results):
        assert result.value["finished_at"] - result.value["admitted_at"] == n  # every step, in one child
    assert health == [False, True]  # no live worker while the replacement started, then back


async def test_an_idle_worker_killed_is_noticed_without_a_call(steps):
    lost = asyncio.Event()
    steps.allow(ENOUGH)
    async with running(counting(steps, concurrency=2)) as engine:
        stage = engine.stages["count"]
        await engine.submit(2).result()
        worker = stage.workers[1]
        worker.on_lost = lambda w: (stage._on_lost(w), lost.set())
        os.kill(worker.pid, signal.SIGKILL)
        await lost.wait()  # the sentinel, not a call, told the engine
        assert engine.serving  # the OP kept one live worker
        results = await asyncio.gather(*(engine.submit(n).result() for n in (3, 4, 5, 6)))
        assert [r.value["finished_at"] - r.value["admitted_at"] for r in results] == [3, 4, 5, 6]
