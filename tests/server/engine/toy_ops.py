"""Toy OPs for engine tests: no torch, observable from the test."""
from __future__ import annotations

import os
import threading
import time

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

    def setup(self, device):
        calls(self.name).devices.append(device)

    def process(self, rows):
        calls(self.name).add(rows)
        delay = max((r.get("sleep", 0) for r in rows if isinstance(r, dict)), default=0)
        if delay:
            time.sleep(delay)
        if self.settings.get("fail_on") is not None:
            return [RuntimeError("boom") if r == self.settings["fail_on"] else r for r in rows]
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
    """Fan-in: sums its inputs' values."""

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


class Counter(SteppingOp):
    """Each row is a step count n; a row finishes after n steps and returns its admission step."""

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
        if self.settings.get("sleep"):
            time.sleep(self.settings["sleep"])
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

    def process(self, rows):
        cls = Busy
        with cls.lock:
            cls.active += 1
            cls.most = max(cls.most, cls.active)
        time.sleep(self.settings.get("sleep", 0.02))
        with cls.lock:
            cls.active -= 1
        return list(rows)


class OffDevice(Busy):
    """Busy, declared as work that needs neither the device nor its turn."""

    uses_device = False


class Faulty(Counter):
    """A Counter whose step raises while a row with value `fail_on` runs (from its
    `fail_after`-th step on), and hangs for `hang` seconds while a row `hang_on` runs."""

    def step(self):
        values = [state[1] for state in self.running.values()]
        fail_on = self.settings.get("fail_on")
        if fail_on in values:
            key = next(k for k, s in self.running.items() if s[1] == fail_on)
            self.hits = getattr(self, "hits", 0) + 1
            if self.hits > self.settings.get("fail_after", 0):
                calls(self.name + ":failed").add(sorted(self.running))
                raise RuntimeError(f"step broke on {key}")
        if self.settings.get("hang_on") in values:
            time.sleep(self.settings["hang"])
        return super().step()


class Hang(Op):
    """Sleeps `hang` seconds on a row equal to `hang_on` (once per process), else echoes."""

    hung = False

    def process(self, rows):
        calls(self.name).add(rows)
        if self.settings.get("hang_on") in rows and not Hang.hung:
            Hang.hung = True
            time.sleep(self.settings["hang"])
        return list(rows)
