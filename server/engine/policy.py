"""The order every waiting place keeps: one policy, chosen in `graph.policy`.

A request is ranked once, when it is admitted, and every place where it waits orders by
that rank: its OP's channel, the stage's row queue (so a stepping OP's admission too),
and the device's turn. vLLM builds its waiting queue from one policy the same way
(`create_request_queue`).

- `fcfs`: the request that came first goes first.
- `priority` (the default): lower `priority` goes sooner, ties by arrival. Waiting ages
  a request: each `graph.starvation_s / (width of graph.priority_range)` seconds it waits
  are worth one level, so its rank is `arrival + (priority - most urgent) * level_s`. A
  rank never changes after admission, so the queues stay plain heaps, and the guard is a
  bound, not a hope: a request admitted at `t` can only be overtaken by requests admitted
  before `t + starvation_s`; later traffic, however urgent, queues behind it.

Under overload the least urgent are refused first: a request less urgent than the
default (priority > 0) may fill only part of `max_inflight`, the least urgent level
`1 - graph.overload_reserve` of it; the default and more urgent ones fill all of it.

    policy = Policy.of(graph)
    request.rank = policy.rank(priority=5, arrival=now)
    queue = Ordered()                   # a heap by rank, first in first out among equals
    queue.push(task, task.rank)
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from tessera.server.engine.errors import InvalidInput

if TYPE_CHECKING:
    from tessera.server.engine.config import GraphConfig

T = TypeVar("T")
Rank = tuple[float, float]  # (when it is due, when it came): smaller goes first
FIRST: Rank = (float("-inf"), float("-inf"))  # ahead of every request (a retried row)


@dataclass(frozen=True)
class Policy:
    kind: str = "priority"
    lowest: int = -10            # the most urgent priority a request may ask for
    highest: int = 10            # the least urgent
    starvation_s: float = 60.0   # the longest a request waits because of more urgent traffic
    overload_reserve: float = 0.25
    preempt: bool = False        # a stepping OP evicts a running row for a more urgent waiting one

    @classmethod
    def of(cls, graph: GraphConfig) -> Policy:
        lowest, highest = graph.priority_range
        return cls(graph.policy, lowest, highest, graph.starvation_s, graph.overload_reserve, graph.preempt)

    @property
    def level_s(self) -> float:
        """Seconds of waiting worth one priority level."""
        return self.starvation_s / max(1, self.highest - self.lowest)

    def check(self, priority: int) -> None:
        """InvalidInput when `priority` lies outside graph.priority_range."""
        if not self.lowest <= priority <= self.highest:
            raise InvalidInput(f"priority must be between {self.lowest} (soonest) and {self.highest}, "
                               f"got {priority}", fields=("priority",))

    def rank(self, priority: int, arrival: float) -> Rank:
        if self.kind == "fcfs":
            return (arrival, arrival)
        return (arrival + (priority - self.lowest) * self.level_s, arrival)

    def admits(self, priority: int, inflight: int, max_inflight: int) -> bool:
        """Whether one more request of `priority` fits: the least urgent are refused first."""
        if self.kind == "fcfs" or priority <= 0 or self.highest <= 0:
            return inflight < max_inflight
        share = 1.0 - self.overload_reserve * priority / self.highest
        return inflight < max(1, int(max_inflight * share))


class Ordered(Generic[T]):
    """A heap of items by rank, first in first out among equal ranks; removal is lazy (a
    removed item is skipped when it reaches the top), so a cancelled request costs O(1)."""

    def __init__(self):
        self._heap: list[tuple[Rank, int, T]] = []
        self._seq = itertools.count()
        self._live = 0
        self._gone: set[int] = set()

    def __len__(self) -> int:
        return self._live

    def __iter__(self) -> Iterator[T]:
        """The live items, in no particular order."""
        return (item for _, seq, item in self._heap if seq not in self._gone)

    def push(self, item: T, rank: Rank) -> None:
        heapq.heappush(self._heap, (rank, next(self._seq), item))
        self._live += 1

    def _settle(self) -> None:
        while self._heap and self._heap[0][1] in self._gone:
            self._gone.discard(heapq.heappop(self._heap)[1])

    def peek(self) -> T | None:
        self._settle()
        return self._heap[0][2] if self._heap else None

    def peek_rank(self) -> Rank | None:
        self._settle()
        return self._heap[0][0] if self._heap else None

    def pop(self) -> T:
        self._settle()
        _, _, item = heapq.heappop(self._heap)
        self._live -= 1
        return item

    def remove(self, which: Callable[[T], bool]) -> int:
        """Drop the live items `which` picks; how many."""
        dropped = 0
        for _, seq, item in self._heap:
            if seq not in self._gone and which(item):
                self._gone.add(seq)
                dropped += 1
        self._live -= dropped
        if len(self._gone) > 64 and len(self._gone) > len(self._heap) // 2:  # compact now and then
            self._heap = [e for e in self._heap if e[1] not in self._gone]
            heapq.heapify(self._heap)
            self._gone.clear()
        return dropped
