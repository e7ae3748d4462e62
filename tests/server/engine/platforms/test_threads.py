"""An OP's `threads`: auto runs the faster thread count per call size, tries the other now
and then, reacts at once to a neighbour, and never changes an image."""
from __future__ import annotations

import hashlib

import pytest

from tessera.server.engine.op import StepRow
from tessera.server.engine.workers.base import StepCall, WorkerSpec
from tessera.server.engine.workers.host import OpHost
from tessera.server.engine.platforms.threads import FIRST_TRY, LONGEST_WAIT, ThreadPolicy, computing
from tests.server.engine import toy_ops


class Machine:
    """Seconds per unit for each thread count, as a test sets them; records what was set."""

    def __init__(self, **per_unit):
        self.per_unit = {int(k[1:]): v for k, v in per_unit.items()}  # t1=..., t2=...
        self.set_to: list[int] = []

    def policy(self, setting="auto", most=2) -> ThreadPolicy:
        return ThreadPolicy(setting, most=most, set_threads=self.set_to.append)

    def scripted(self) -> ThreadPolicy:
        """A policy for an OpHost: the host's measured seconds are replaced by this machine's,
        so its choices do not depend on how fast the test machine runs a toy step."""
        machine = self

        class Scripted(ThreadPolicy):
            def record(self, kind, rows, n, seconds, units=1):
                super().record(kind, rows, n, machine.per_unit[n] * units, units)

            def gives_up(self, kind, rows, n, per_unit):
                return super().gives_up(kind, rows, n, machine.per_unit[n])

        return Scripted("auto", most=2, set_threads=self.set_to.append)

    def call(self, policy: ThreadPolicy, rows: int = 64, kind: str = "step") -> int:
        n = policy.choose(kind, rows)
        policy.record(kind, rows, n, self.per_unit[n], units=1)
        return n


def test_auto_starts_on_all_threads_then_tries_one():
    m = Machine(t1=0.016, t2=0.010)
    p = m.policy()
    assert [m.call(p) for _ in range(FIRST_TRY)] == [2] * FIRST_TRY
    assert m.call(p) == 1 and m.call(p) == 2      # one thread tried once, and it lost
    assert m.set_to == [2, 1, 2]                     # set only when it changes


def test_one_thread_takes_over_when_it_is_faster():
    m = Machine(t1=0.002, t2=0.003)
    p = m.policy()
    choices = [m.call(p) for _ in range(40)]
    assert choices[FIRST_TRY:FIRST_TRY + 8] == [1] * 8
    assert choices.count(1) >= 30


def test_the_loser_is_tried_less_and_less_often():
    m = Machine(t1=0.016, t2=0.010)
    p = m.policy()
    choices = [m.call(p) for _ in range(400)]
    tries = [i for i, n in enumerate(choices) if n == 1]
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert tries[0] == FIRST_TRY
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:]))  # the wait grows
    m2 = Machine(t1=0.016, t2=0.010)
    p2 = m2.policy()
    choices = [m2.call(p2) for _ in range(4000)]
    tries = [i for i, n in enumerate(choices) if n == 1]
    assert max(b - a for a, b in zip(tries, tries[1:])) <= LONGEST_WAIT + 1


def test_a_neighbour_slowing_the_chosen_count_moves_calls_at_once():
    m = Machine(t1=0.016, t2=0.010)
    p = m.policy()
    for _ in range(300):  # long settled on two threads: the next try is far away
        m.call(p)
    m.per_unit[2] = 0.200  # a process starts spinning on the other core: two threads collapse
    assert m.call(p) == 2  # the first slow call is noticed ...
    assert m.call(p) == 1  # ... and the very next one tries one thread, which wins
    assert [m.call(p) for _ in range(FIRST_TRY - 1)] == [1] * (FIRST_TRY - 1)
    m.per_unit[2] = 0.010  # the neighbour ends: two threads win their next try
    choices = [m.call(p) for _ in range(3 * FIRST_TRY)]
    assert choices[-1] == 2


def test_each_call_size_has_its_own_choice():
    m = Machine(t1=0.010, t2=0.005)
    p = m.policy()
    small = Machine(t1=0.002, t2=0.003)
    chosen = []
    for _ in range(40):
        chosen.append(small.call(p, rows=4))
        m.call(p, rows=64)
    assert chosen[-10:].count(1) >= 9   # one thread for small calls; two tried now and then
    snap = p.snapshot()
    assert set(snap) == {"step/4-7", "step/64-127"}
    assert snap["step/4-7"][1] < snap["step/4-7"][2] and snap["step/64-127"][2] < snap["step/64-127"][1]


def test_a_new_size_starts_with_what_its_neighbour_learned():
    m = Machine(t1=0.002, t2=0.003)
    p = m.policy()
    for _ in range(30):
        m.call(p, rows=4)
    assert p.choose("step", 6) == 1      # same bucket
    assert p.choose("step", 12) == 1     # unmeasured: leans on the 4-7 row size
    assert p.choose("batch", 12) == 2    # another kind learns for itself


def test_a_fixed_count_is_set_and_kept():
    m = Machine(t1=0.001, t2=0.5)
    p = m.policy(setting=2)
    assert [m.call(p) for _ in range(20)] == [2] * 20
    assert m.set_to == [2] and p.snapshot() == {}
    one_core = Machine(t1=0.01).policy(most=1)
    assert one_core.choices == (1,)


def _try_call(m: Machine) -> list[tuple[int, int]]:
    """(steps, threads) of FIRST_TRY calls on all threads, then the try of one thread."""
    host = OpHost(WorkerSpec(toy_ops.Counter, {}, "count", "cpu", 0, capacity=8))
    host.setup()
    host.device.policy = m.scripted()
    replies = [host.step(StepCall(admit=[StepRow(k, 10_000) for k in range(4)], budget=16), lambda: False)]
    replies += [host.step(StepCall(budget=16), lambda: False) for _ in range(FIRST_TRY)]
    assert set(host.device.policy.snapshot()) == {"step/4-7"}
    return [(r.steps, r.threads) for r in replies]


def test_a_try_that_clearly_loses_its_first_step_stops_there():
    """A collapsed count costs one step of a call allowed sixteen (1.6x slower here)."""
    assert _try_call(Machine(t1=0.016, t2=0.010)) == [(16, 2)] * FIRST_TRY + [(1, 1)]


def test_a_try_that_keeps_up_runs_the_calls_steps():
    """Within 1.5x of the chosen count, the try measures as many steps as a normal call, so
    one lucky or unlucky step does not decide."""
    assert _try_call(Machine(t1=0.012, t2=0.010)) == [(16, 2)] * FIRST_TRY + [(16, 1)]


def test_calls_computing_side_by_side_share_the_cores_and_are_not_measured():
    m = Machine(t1=0.016, t2=0.010)
    p = m.policy(most=2)
    with computing():
        assert [m.call(p) for _ in range(3)] == [2, 2, 2]  # alone: all threads
        with computing():                                   # a second call starts beside it
            assert p.crowded(2) and not p.crowded(1)
            assert [m.call(p) for _ in range(FIRST_TRY)] == [1] * FIRST_TRY
        assert not p.crowded(2)
        assert m.call(p) == 2  # the shared calls were not measured: no try of one thread is due yet
    assert p.snapshot() == {"step/64-127": {2: 0.010}}


def test_a_fixed_count_is_never_crowded():
    m = Machine(t1=0.016, t2=0.010)
    p = m.policy(setting=2)
    with computing(), computing():
        assert m.call(p) == 2 and not p.crowded(2)


def test_a_stepping_call_returns_when_another_starts_computing_beside_it():
    """The host checks its share between steps: a call on two threads hands back to the
    loop once another call computes beside it, and the next call runs on one."""
    m = Machine(t1=0.016, t2=0.010)
    host = OpHost(WorkerSpec(toy_ops.Counter, {}, "count", "cpu", 0, capacity=8))
    host.setup()
    host.device.policy = m.scripted()
    beside = computing()
    steps = 0

    def stop() -> bool:  # after the call's second step, another worker starts a call
        nonlocal steps
        steps += 1
        if steps == 2:
            beside.__enter__()
        return False

    first = host.step(StepCall(admit=[StepRow(k, 10_000) for k in range(4)], budget=16), stop)
    second = host.step(StepCall(budget=16), lambda: False)
    beside.__exit__(None, None, None)
    third = host.step(StepCall(budget=16), lambda: False)
    assert (first.steps, first.threads) == (2, 2)
    assert (second.steps, second.threads) == (16, 1)
    assert (third.steps, third.threads) == (16, 2)


def test_batch_calls_are_measured_per_row():
    m = Machine(t1=0.001, t2=0.002)
    host = OpHost(WorkerSpec(toy_ops.Echo, {}, "echo", "cpu", 0))
    host.setup()
    host.device.policy = m.scripted()
    assert [host.process([i, i + 1, i + 2]) for i in range(FIRST_TRY + 2)][-1] == [9, 10, 11]
    assert host.device.policy.last == 1 and m.set_to == [2, 1]   # one thread tried, won, kept
    assert set(host.device.policy.snapshot()) == {"batch/2-3"}
    assert set(host.device.policy.snapshot()["batch/2-3"]) == {1, 2}


def test_images_do_not_depend_on_the_thread_count():
    """The bundled model's images, PNG bytes, at one thread and at two: identical."""
    torch = pytest.importorskip("torch")
    from tessera.ops.messages import GenerateParams
    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph

    pipe = LocalPipeline(served_graph(), "cpu", capacity=16)
    prompts = ["a red circle", "a small blue square at the top", "a large green diamond on a white background"]
    reqs = [GenerateParams(p, seed=40 + i, num_candidates=4, num_images=4) for i, p in enumerate(prompts)]
    before = torch.get_num_threads()
    digests = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            h = hashlib.sha256()
            for ranked in pipe.generate(reqs):
                for image in ranked.images:
                    h.update(image.png)
            digests[n] = h.hexdigest()
    finally:
        torch.set_num_threads(before)
    assert digests[1] == digests[2]


async def test_only_compute_threads_run_torch_on_more_than_one_thread():
    """The event loop's thread runs torch on one thread while an engine runs (an OpenMP team
    of its own would slow the compute thread's), and gets its count back at stop; the
    compute thread still chooses among all of them."""
    torch = pytest.importorskip("torch")
    from tessera.server.engine.platforms.threads import process_threads
    from tests.server.engine.helpers import chain, running

    before = torch.get_num_threads()
    async with running(chain(("echo", "Echo", {}))) as engine:
        assert torch.get_num_threads() == 1
        worker = engine.stages["echo"].workers[0]
        assert worker.host.device.policy.most == process_threads() == before
        assert (await engine.submit(7).result()).value == 7
    assert torch.get_num_threads() == before


def test_policies_sharing_a_compute_thread_each_get_their_own_count():
    """Thread workers taking device turns share one OS thread: a policy must set its count
    again after another OP's policy changed it there (it once kept a stale count of its own,
    and a decode call ran on the sampler's one thread)."""
    counts: list[int] = []
    sampler = ThreadPolicy(1, set_threads=counts.append)
    decoder = ThreadPolicy(2, set_threads=counts.append)
    for policy in (decoder, sampler, decoder, decoder, sampler):
        policy.choose("batch", 4)
    assert counts == [2, 1, 2, 1]  # set whenever the thread's count changes, and only then
