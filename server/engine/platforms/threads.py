"""How many threads one OP call computes with (an OP's `threads`), chosen per call size.

On a small CPU the right number moves with the call and the machine. Measured on this
project's 2-core VM with the bundled model: quiet, a 64-row decode step took 9.6–11.5 ms
on torch's two threads and 15.8–16.2 ms on one, while a 4-row step was the same on
either; with one core kept busy by an unrelated process, two threads collapsed (libgomp's
team waits at every barrier for the thread that shares its core with the other process:
0.37 against 8.05 images/s in the offline pipeline). No fixed number is right for both.

`threads: auto` (the default) measures instead. For each kind of call (a batch call, a
decoding step) and size (its rows, to the next power of two) it keeps an average time
per unit (a row of a batch call, a step of a stepping call) for one thread and for all of
the process's threads (torch's count when the worker started: the cores, or
OMP_NUM_THREADS, or what Ray gave the actor; with node turns, the node's cores), runs
the faster, and now and then tries the other. A new size starts with what the nearest
size already measured runs (all threads, at first). The other count is tried after 8
calls of that size; each time it loses, the wait doubles (quadruples when it lost by
half or more; at most 256 calls); it is tried at once when the chosen count suddenly
runs twice as slow as its average and at least 1 ms per unit (a neighbour started), and
8 calls after the two averages change places. A stepping call that tries the other count
stops after its first step when that step ran 1.5 times as long as the chosen count's
average (the other has collapsed: the try cost one step) and otherwise runs its steps, so
the try's figure is an average over as many steps as the chosen count's; a one-step try
let a single lucky step move 64-row steps to one thread, where they run 1.6 times
slower, for a fifth of the steps at c=32. `threads: N` fixes the count.

Workers that compute at the same time share the cores. A CPU worker counts itself as
computing for the length of each call (`computing()`), and a call's count is at most the
cores divided by the calls computing in the process at its start, so two sampler
workers stepping side by side each run one thread (two teams of two threads on two cores
wait at every barrier for a thread the other team preempted), and a worker alone may
use every core; a stepping call returns to the event loop when another call starts
beside it and so lowers its share. With `graph.device_turns` only one call computes at a
time and the share is every core, as before.

Images do not depend on the choice: torch's CPU kernels split rows, not the sums inside
one, between threads (tests/server/engine/platforms/test_threads.py checks tokens and
images at one and two threads).
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger("tessera.engine")

FIRST_TRY = 8        # calls of one size before the other count is tried again
LONGEST_WAIT = 256   # the most calls between two tries
SMOOTHING = 0.3      # weight of the newest time in the running average
SUDDEN = 2.0         # a call this many times slower than the average asks for a try now
CLEAR_LOSS = 1.5     # a try this many times slower than the best waits four times as long
NOTICEABLE_S = 0.001  # a sudden slowdown to less than this per unit is noise, not a neighbour


@functools.cache
def process_threads() -> int:
    """Torch's thread count in this process before any call changed it (1 without torch)."""
    try:
        import torch
    except ImportError:
        return 1
    return max(1, torch.get_num_threads())


def node_cores() -> int:
    """The cores this process may run on: what a worker holding the node's turn uses."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_computing = 0
_computing_lock = threading.Lock()


@contextmanager
def computing():
    """Count the calling worker's call as computing on this process's cores while it runs."""
    global _computing
    with _computing_lock:
        _computing += 1
    try:
        yield
    finally:
        with _computing_lock:
            _computing -= 1


def computing_now() -> int:
    """The calls computing in this process now (at least 1: the caller's)."""
    return max(1, _computing)


def keep_off_this_thread() -> int | None:
    """Run torch on one thread on the calling thread (the event loop's); returns the count
    it had, for `restore`. Only compute threads should open an OpenMP team: a thread that
    runs one parallel region keeps a team of its own for good, and with more teams than
    cores libgomp stops spinning between regions, for the compute thread too. Measured in
    process (default graph, c=1, torch's two threads): a 4-row sampler step took 5.5-7.0 ms
    with the loop's team alive and 3.7-4.5 ms without."""
    try:
        import torch
    except ImportError:
        return None
    process_threads()  # the compute threads' count, read before it changes here
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    return before


def restore(count: int | None) -> None:
    if count is not None:
        _torch_set_threads(count)


@dataclass
class _Size:
    """What one (kind, size) has measured: seconds per unit, by thread count."""
    per_unit: dict[int, float] = field(default_factory=dict)
    calls: int = 0
    wait: int = FIRST_TRY
    next_try: int = FIRST_TRY


class ThreadPolicy:
    """Chooses and sets the thread count of each call; told afterwards how long it took.

        n = policy.choose("step", rows)      # sets torch's count on the calling thread
        ...compute...
        policy.record("step", rows, n, seconds, units=steps)
    """

    def __init__(self, setting: int | str = "auto", most: int | None = None, set_threads=None):
        self.setting = setting
        self.most = most if most is not None else process_threads()
        self._set = set_threads or _torch_set_threads
        self._sizes: dict[tuple[str, int], _Size] = {}
        self.trying = False   # the last choice was a try of the count that is not the best
        self.shared = False   # the last choice was a share of the cores (other calls computing)
        self.last = 0         # the last call's thread count

    @property
    def choices(self) -> tuple[int, ...]:
        if self.setting != "auto":
            return (int(self.setting),)
        return (self.most, 1) if self.most > 1 else (1,)

    def share(self) -> int:
        """The threads a call may use now: the cores over the calls computing beside it."""
        return max(1, self.most // computing_now())

    def crowded(self, n: int) -> bool:
        """Whether a call running `n` threads (auto) now has more than its share."""
        return self.setting == "auto" and self.share() < n

    def choose(self, kind: str, rows: int) -> int:
        choices = self.choices
        self.trying = False
        self.shared = self.setting == "auto" and self.share() < self.most
        if self.shared:  # other calls compute beside this one: its share, not measured
            n = self.share()
        elif len(choices) == 1:
            n = choices[0]
        else:
            size = self._sizes.setdefault((kind, _bucket(rows)), _Size())
            best = self._best(size)
            if best is None:      # a new size starts with what its nearest measured size runs
                n = self._nearest(kind, _bucket(rows)) or choices[0]
            elif size.calls >= size.next_try:
                n, self.trying = next(c for c in choices if c != best), True
            else:
                n = best
        # The count last set on this OS thread, by any policy: thread workers taking device
        # turns share one compute thread, so another OP's call may have changed it since.
        last = _SET_HERE.__dict__.setdefault("by_setter", {})
        if last.get(self._set) != n:
            self._set(n)
            last[self._set] = n
        self.last = n
        return n

    def record(self, kind: str, rows: int, n: int, seconds: float, units: int = 1) -> None:
        if len(self.choices) == 1 or units <= 0 or self.shared:
            return
        size = self._sizes.setdefault((kind, _bucket(rows)), _Size())
        per = seconds / units
        before = self._best(size)
        known = size.per_unit.get(n)
        if self.trying or known is None:
            size.per_unit[n] = per             # a try replaces what is stale
        else:
            size.per_unit[n] = known + SMOOTHING * (per - known)
        size.calls += 1
        if self.trying:
            best = self._best(size)
            if best == n:
                size.wait = FIRST_TRY
            else:  # lost: wait longer, the longer the clearer it lost (a try costs its loss)
                growth = 4 if size.per_unit[n] >= CLEAR_LOSS * size.per_unit[best] else 2
                size.wait = min(LONGEST_WAIT, size.wait * growth if known is not None else FIRST_TRY * growth // 2)
            size.next_try = size.calls + size.wait
        elif known is not None and per > SUDDEN * known and per >= NOTICEABLE_S and self._best(size) == n:
            size.next_try = size.calls      # the chosen count suddenly slowed: try the other now
        after = self._best(size)
        if before is not None and after != before:
            if not self.trying:  # the average moved past the other's: check it again soon
                size.wait, size.next_try = FIRST_TRY, size.calls + FIRST_TRY
            log.debug("%s calls of ~%d rows now on %d thread(s) (%s)", kind, rows, after,
                      ", ".join(f"{c}: {1000 * t:.2f} ms" for c, t in sorted(size.per_unit.items())))
        self.trying = False

    def gives_up(self, kind: str, rows: int, n: int, per_unit: float) -> bool:
        """Whether a try of `n` threads that took `per_unit` so far lost clearly (by
        CLEAR_LOSS) against the chosen count's average, so the call should stop trying."""
        size = self._sizes.get((kind, _bucket(rows)))
        best = self._best(size) if size is not None else None
        if not self.trying or best is None or best == n:
            return False
        return per_unit >= CLEAR_LOSS * size.per_unit[best]

    def snapshot(self) -> dict[str, dict[int, float]]:
        """Seconds per unit by thread count, for each `kind/rows` measured (for logs and tests)."""
        return {f"{k}/{2 ** (b - 1) if b else 0}-{2 ** b - 1}": dict(s.per_unit)
                for (k, b), s in sorted(self._sizes.items())}

    def _nearest(self, kind: str, bucket: int) -> int | None:
        settled = [(abs(b - bucket), self._best(s)) for (k, b), s in self._sizes.items()
                   if k == kind and len(s.per_unit) == len(self.choices)]
        return min(settled)[1] if settled else None

    @staticmethod
    def _best(size: _Size) -> int | None:
        return min(size.per_unit, key=size.per_unit.get) if size.per_unit else None


_SET_HERE = threading.local()  # .by_setter: {setter: the count it last set on this OS thread}


def _bucket(rows: int) -> int:
    return max(0, int(rows)).bit_length()


def _torch_set_threads(n: int) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(n)
