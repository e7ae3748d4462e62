"""Toy OPs for engine tests: no torch, observable from the test."""
from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from typing import Any

from tessera.server.engine import InvalidInput, Op, SteppingOp, StepProgress, StepResult


class Calls:
    """Thread-safe record of every call an OP received."""

    def __init__(self):
        self.lock = threading.Lock()
        self.batches: list[list] = []
        self.devices: list[str] = []

    def add(self, rows):
        with self.lock:
            self.batches.append(list(rows))

    @property
    def rows(self) -> list:
        return [r for b in self.batches for r in b]


CALLS: dict[str, Calls] = {}


def calls(name: str) -> Calls:
    return CALLS.setdefault(name, Calls())


# Long enough never to matter when things work, short enough that a broken test fails
# instead of hanging the suite. Never a measurement: nothing asserts how long anything took.
STUCK_S = 30.0


class Gate:
    """A point where an OP's worker thread stops until the test opens it.

        gate("slow")            # rows {"gate": "slow"} stop in Echo until...
        await gate("slow").reached()
        gate("slow").open()
    """

    def __init__(self):
        self._reached = threading.Event()
        self._opened = threading.Event()

    def pass_through(self) -> None:  # on the worker thread
        self._reached.set()
        if not self._opened.wait(STUCK_S):
            raise TimeoutError("the test never opened this gate")

    async def reached(self) -> None:
        if not await asyncio.to_thread(self._reached.wait, STUCK_S):
            raise TimeoutError("no worker reached the gate")

    def open(self) -> None:
        self._opened.set()


class Pace:
    """Lets a stepping OP take only the steps the test allows (settings {"pace": name})."""

    def __init__(self):
        self._cond = threading.Condition()
        self.allowed = 0
        self.taken = 0
        self.waiting = 0  # threads inside take(), waiting for a step

    def take(self) -> None:  # on the worker thread, at the start of each step
        with self._cond:
            self.waiting += 1
            try:
                if not self._cond.wait_for(lambda: self.taken < self.allowed, STUCK_S):
                    raise TimeoutError("the test never allowed this step")
            finally:
                self.waiting -= 1
            self.taken += 1
            self._cond.notify_all()

    def allow(self, steps: int = 1) -> None:
        with self._cond:
            self.allowed += steps
            self._cond.notify_all()

    def free(self) -> None:
        self.allow(10**9)

    async def taken_at_least(self, steps: int) -> None:
        def wait() -> bool:
            with self._cond:
                return self._cond.wait_for(lambda: self.taken >= steps, STUCK_S)
        if not await asyncio.to_thread(wait):
            raise TimeoutError(f"the OP never took {steps} steps")


GATES: dict[str, Gate] = {}
PACES: dict[str, Pace] = {}


def gate(name: str) -> Gate:
    return GATES.setdefault(name, Gate())


def pace(name: str) -> Pace:
    return PACES.setdefault(name, Pace())


def release_all() -> None:
    """Test teardown: nothing stays blocked after its test."""
    for g in GATES.values():
        g.open()
    for p in PACES.values():
        p.free()
    GATES.clear()
    PACES.clear()


async def until(condition, what: str) -> None:
    """Yield to the event loop until `condition()` holds: a check after each turn of the
    loop, for state that has no event of its own to wait on."""
    loop = asyncio.get_running_loop()
    stuck = loop.time() + STUCK_S
    while not condition():
        if loop.time() > stuck:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0)


class Echo(Op):
    """Returns each row; a row {"gate": name, ...} first waits at gate(name)."""

    @dataclass
    class Settings:
        fail_on: Any = None  # a row equal to this fails alone

    def setup(self, device):
        calls(self.name).devices.append(device)

    def process(self, rows):
        calls(self.name).add(rows)
        for name in {r["gate"] for r in rows if isinstance(r, dict) and "gate" in r}:
            gate(name).pass_through()
        if self.settings.fail_on is not None:
            return [RuntimeError("boom") if r == self.settings.fail_on else r for r in rows]
        return list(rows)


class Raise(Op):
    """Raises for the whole batch when any row is 'bad'; 'invalid' raises InvalidInput."""

    def process(self, rows):
        calls(self.name).add(rows)
        if "invalid" in rows:
            raise InvalidInput("row 'invalid' is not acceptable")
        if "bad" in rows:
            raise ValueError("cannot handle 'bad'")
        return [f"ok:{r}" for r in rows]


class Flaky(Op):
    """Fails the first call for each row, then succeeds (exercises retry)."""

    def process(self, rows):
        c = calls(self.name)
        seen = set(map(str, c.rows))
        c.add(rows)
        return [RuntimeError("transient") if str(r) not in seen else r for r in rows]


class AddOne(Op):
    def process(self, rows):
        calls(self.name).add(rows)
        return [r + 1 for r in rows]


class Double(Op):
    def process(self, rows):
        calls(self.name).add(rows)
        return [r * 2 for r in rows]


class Join(Op):
    """Fan-in without declared names: sums its inputs' values (a dict keyed by OP name)."""

    def process(self, rows):
        calls(self.name).add(rows)
        return [sum(r.values()) for r in rows]


class Fanned(Op):
    """Splits {"n": k, "x": x} into k rows x+0..x+k-1; merges them back into a list."""

    def split(self, value):
        return [value["x"] + i for i in range(value["n"])]

    def process(self, rows):
        calls(self.name).add(rows)
        return [r * 10 for r in rows]

    def merge(self, value, outputs):
        return outputs


class Pid(Op):
    def process(self, rows):
        return [os.getpid() for _ in rows]


class Large(Op):
    """Each row n becomes n bytes (a reply larger than a socket's buffer, as images are)."""

    def process(self, rows):
        return [bytes(range(256)) * (n // 256) for n in rows]


class Difference(Op):
    """Fan-in by declared names: `minuend - subtrahend`, whatever the OPs feeding them are called."""

    @dataclass
    class Inputs:
        minuend: int
        subtrahend: int

    def process(self, rows):
        calls(self.name).add(rows)
        return [r.minuend - r.subtrahend for r in rows]


STEPS = 0  # every Counter step so far, for OPs that note when they ran


class Counter(SteppingOp):
    """Each row is a step count n; a row finishes after n steps and returns its admission step."""

    @dataclass
    class Settings:
        pace: str = ""  # take each step only as pace(name) allows

    def setup(self, device):
        self.running = {}  # key -> [steps left, total, step admitted]
        self.steps = 0
        self.log = calls(self.name)

    def admit(self, rows):
        bad = {}
        for row in rows:
            if row.value == "invalid":
                bad[row.key] = InvalidInput("cannot count to 'invalid'")
            else:
                self.running[row.key] = [row.value, row.value, self.steps]
        return bad

    def step(self):
        global STEPS
        if self.settings.pace:
            pace(self.settings.pace).take()
        self.steps += 1
        STEPS += 1
        self.log.add(sorted(self.running))
        result = StepResult()
        for key, state in list(self.running.items()):
            state[0] -= 1
            result.progress[key] = StepProgress(state[1] - state[0], state[1])
            if state[0] == 0:
                result.finished[key] = {"admitted_at": state[2], "finished_at": self.steps}
                del self.running[key]
        return result

    def evict(self, keys):
        for key in keys:
            self.running.pop(key, None)

    @property
    def active(self):
        return len(self.running)


class Busy(Op):
    """Records how many Busy calls ran at once, and at which Counter step each ran.

    settings {"open": name} opens gate(name), then {"wait_for": name} holds the call at
    gate(name): two OPs that each open one gate and wait for the other's prove that they
    can compute at the same time by meeting."""

    lock = threading.Lock()
    active = 0
    most = 0

    @dataclass
    class Settings:
        open: str = ""      # opens gate(open) on each call...
        wait_for: str = ""  # ...then waits at gate(wait_for)

    def process(self, rows):
        cls = Busy
        with cls.lock:
            cls.active += 1
            cls.most = max(cls.most, cls.active)
        calls(self.name).add([(STEPS, r) for r in rows])
        if self.settings.open:
            gate(self.settings.open).open()
        if self.settings.wait_for:
            gate(self.settings.wait_for).pass_through()
        with cls.lock:
            cls.active -= 1
        return list(rows)


class OffDevice(Busy):
    """Busy, declared as work that needs neither the device nor its turn."""

    uses_device = False


class Faulty(Counter):
    """A Counter whose step raises while a row with value `fail_on` runs (after
    `fail_after` such steps), and stops at gate("hang") while a row `hang_on` runs."""

    @dataclass
    class Settings:
        pace: str = ""
        fail_on: Any = None
        fail_after: int = 0
        hang_on: Any = None

    def step(self):
        values = [state[1] for state in self.running.values()]
        if self.settings.fail_on in values:
            key = next(k for k, s in self.running.items() if s[1] == self.settings.fail_on)
            self.hits = getattr(self, "hits", 0) + 1
            if self.hits > self.settings.fail_after:
                calls(self.name + ":failed").add(sorted(self.running))
                raise RuntimeError(f"step broke on {key}")
        if self.settings.hang_on is not None and self.settings.hang_on in values:
            gate("hang").pass_through()
        return super().step()


class Hang(Op):
    """Stops at gate("hang") the first time it sees a row equal to `hang_on`, else echoes."""

    @dataclass
    class Settings:
        hang_on: Any = None

    def process(self, rows):
        first = not calls(self.name).batches
        calls(self.name).add(rows)
        if first and self.settings.hang_on in rows:
            gate("hang").pass_through()
        return list(rows)


class PipePacedCounter(Counter):
    """A Counter in a child process, where the test's paces cannot reach: it takes a step
    for each byte the test writes to the FIFO at `pace_fifo` (see StepPipe)."""

    @dataclass
    class Settings:
        pace: str = ""
        pace_fifo: str = ""

    def step(self):
        if getattr(self, "_fifo", None) is None:
            self._fifo = os.open(self.settings.pace_fifo, os.O_RDONLY)
        if not os.read(self._fifo, 1):
            raise RuntimeError("the test closed the step pipe")
        return super().step()


class StepPipe:
    """The test's end of a PipePacedCounter's FIFO: `allow(n)` lets the child take n steps."""

    def __init__(self, path: str):
        os.mkfifo(path)
        self.path = path
        self._fd = os.open(path, os.O_RDWR)  # held open, so the child's open never waits

    def allow(self, steps: int) -> None:
        os.write(self._fd, b"s" * steps)

    def close(self) -> None:
        os.close(self._fd)


class CounterByWorker(Counter):
    """A Counter that notes, at each step, which instance stepped and how many rows it held."""

    def step(self):
        calls(f"{self.name}/by-worker").add([id(self), len(self.running)])
        return super().step()
