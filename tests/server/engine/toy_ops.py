"""Toy OPs for engine tests: no torch, observable from the test."""
from __future__ import annotations

import os
import threading
import time
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


class Echo(Op):
    """Returns each row; a row {"sleep": s, ...} sleeps s seconds first (per batch, max)."""

    @dataclass
    class Settings:
        fail_on: Any = None  # a row equal to this fails alone

    def setup(self, device):
        calls(self.name).devices.append(device)

    def process(self, rows):
        calls(self.name).add(rows)
        delay = max((r.get("sleep", 0) for r in rows if isinstance(r, dict)), default=0)
        if delay:
            time.sleep(delay)
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


class Difference(Op):
    """Fan-in by declared names: `minuend - subtrahend`, whatever the OPs feeding them are called."""

    @dataclass
    class Inputs:
        minuend: int
        subtrahend: int

    def process(self, rows):
        calls(self.name).add(rows)
        return [r.minuend - r.subtrahend for r in rows]


class Counter(SteppingOp):
    """Each row is a step count n; a row finishes after n steps and returns its admission step."""

    @dataclass
    class Settings:
        sleep: float = 0.0  # seconds per step

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
        self.steps += 1
        self.log.add(sorted(self.running))
        if self.settings.sleep:
            time.sleep(self.settings.sleep)
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
    """Sleeps `sleep` seconds per call, recording how many Busy calls ran at once."""

    lock = threading.Lock()
    active = 0
    most = 0

    @dataclass
    class Settings:
        sleep: float = 0.02

    def process(self, rows):
        cls = Busy
        with cls.lock:
            cls.active += 1
            cls.most = max(cls.most, cls.active)
        time.sleep(self.settings.sleep)
        with cls.lock:
            cls.active -= 1
        return list(rows)


class OffDevice(Busy):
    """Busy, declared as work that needs neither the device nor its turn."""

    uses_device = False
