"""The CPU platform: every CPU thread policy of the engine, in one place.

- Device turns (`graph.device_turns`): thread workers that compute on the CPU share one
  compute thread (one call at a time, each with every core, one OpenMP team).
- Node turns (`turns.py`): with device turns, when some OP computes in another process
  (mode process or ray), every CPU worker takes the node's turn around each call and step.
- Thread counts (`threads.py`, an OP's `threads: auto | N`): chosen per call size by
  measurement; a call's count is at most its share of the cores.
- OpenMP teams: only threads that may compute on more than one thread open a team.
- Beside the turn: a stepping OP's thread workers after the first compute on a thread of
  their own, one core each, beside whichever call holds the turn.
- The event loop's thread runs torch on one thread (`threads.keep_off_this_thread`).
- What an OP asks of a CPU (`CpuCompute`): "auto" precision (precision.py: bfloat16 for the
  large families on a CPU with bf16 matmuls, else float32), row-invariant bf16 linear layers,
  eager model calls for "auto", MemAvailable as the memory free.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tessera.server.engine.platforms import Compute, DeviceHost, Platform, WorkerPlan
from tessera.server.engine.platforms.threads import (ThreadPolicy, computing, keep_off_this_thread, node_cores,
                                                     restore)
from tessera.server.engine.platforms.turns import open_turn

if TYPE_CHECKING:
    from tessera.server.engine.config import OpConfig
    from tessera.server.engine.op import Op
    from tessera.server.engine.workers.base import WorkerSpec

__all__ = ["CpuCompute", "CpuHost", "CpuPlan", "CpuPlatform"]


class CpuCompute(Compute):
    """A CPU computes "auto" in bfloat16 where it has bf16 matmuls and the family measured
    faster in it, else in float32 (precision.py), and runs "auto" model calls eagerly:
    compiling the step measured no gain worth its time at each start (docs/performance.md);
    `padded` and `compile` run when asked for by name."""

    kind = "cpu"
    auto_mode = "off"

    def auto_dtype(self, family: str | None) -> str:
        if self.device == "meta":
            return "float32"
        from tessera.server.engine.platforms.precision import cpu_auto_dtype
        return cpu_auto_dtype(family)

    def prepare(self, module, dtype) -> None:
        import torch
        if dtype in (torch.bfloat16, torch.float16):
            from tessera.server.engine.platforms.precision import make_row_invariant
            make_row_invariant(module)

    def free_memory(self) -> int | None:
        """MemAvailable; None if unknown or on the meta device (a model built only to describe
        or tokenize holds no memory)."""
        if self.device == "meta":
            return None
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None


@dataclass
class CpuPlan:
    """What a CPU worker's side needs to know (it pickles, for process and Ray workers)."""
    threads: int | str = "auto"  # threads per call: "auto" (chosen by measurement) or a count
    turns: bool = False  # take the node's turn around each call and step
    # May open an OpenMP team (threads: auto up to all cores). Off for all but one thread
    # worker of a process whose workers compute side by side (no device turns): with more
    # teams than cores libgomp stops spinning between parallel regions, for every team.
    team: bool = True


class CpuPlatform(Platform):
    kind = "cpu"
    Compute = CpuCompute

    def __init__(self, graph, turns=None):
        super().__init__(graph, turns)
        self._loop_threads: int | None = None  # torch's count on the loop's thread before open

    @property
    def node_turns(self) -> bool:
        """Workers take the node's turn (turns.py) when device turns are on and some OP
        computes in another process (mode process or ray), which the one compute thread of
        this process cannot order."""
        return self.graph.device_turns and any(op.mode != "thread" for op in self.graph.ops.values())

    def beside_turns(self, cfg: OpConfig, index: int) -> bool:
        """Whether worker `index` of OP `cfg` computes on a CPU thread of its own beside the
        device's turn (one thread, no OpenMP team, outside the node's turn): with device
        turns, a stepping OP's thread workers after the first. The first takes turns with
        the other OPs, with every core while it is alone; the others step side by side with
        whichever call holds the turn, each on its share of the cores (threads.py), and
        hold rows only when the load is more than half a batch (stepping.py, `room`).
        Measured on 2 cores: two sampler workers side by side beat one on both cores by
        11-13% at 32 requests in flight (README, Performance)."""
        return (self.graph.device_turns and cfg.stepping and cfg.mode == "thread" and index > 0
                and cfg.op_class.uses_device)

    def may_open_team(self, cfg: OpConfig, index: int) -> bool:
        """Whether worker `index` of OP `cfg` may compute on more than one thread. With device
        turns the thread workers share one compute thread (one team); a worker in a process
        or actor of its own has its process to itself. Without turns, thread workers compute
        side by side, and only the first worker of the first stepping OP (the sampler) may:
        each extra team would stop libgomp spinning for all of them (threads.py)."""
        if self.graph.device_turns or cfg.mode != "thread":
            return True
        first = next((c for c in self.graph.ops.values() if c.stepping and c.mode == "thread"), None)
        return first is not None and first.name == cfg.name and index == 0

    def plan(self, cfg: OpConfig, index: int, device: str) -> WorkerPlan | None:
        beside = self.beside_turns(cfg, index)
        if beside and not cfg.op_class.steps_beside(cfg.settings):
            self.tell_once(cfg, logging.DEBUG, "%s: one stepping worker on %s (concurrency %d asks for more; its "
                           "step is bound by reading the weights, so a second would read them again for half the "
                           "rows and hold a second cache)", cfg.name, device, cfg.concurrency)
            return None
        compute = CpuPlan(cfg.threads, turns=self.node_turns and not beside,
                          team=not beside and self.may_open_team(cfg, index))
        return WorkerPlan(compute, None if beside else self.turn_thread(cfg, device))

    @staticmethod
    def host(spec: WorkerSpec, others_waiting: Callable[[], int] | None = None) -> CpuHost:
        return CpuHost(spec, others_waiting)

    def open(self) -> None:
        self._loop_threads = keep_off_this_thread()

    def close(self) -> None:
        super().close()
        restore(self._loop_threads)
        self._loop_threads = None


class CpuHost(DeviceHost):
    """A CPU worker's side: the node's turn, the count of calls computing, the thread policy."""

    def __init__(self, spec: WorkerSpec, others_waiting: Callable[[], int] | None = None):
        super().__init__(spec, others_waiting)
        plan: CpuPlan = spec.compute if isinstance(spec.compute, CpuPlan) else CpuPlan()
        computes = spec.op_class.uses_device
        self.label = spec.label
        self._computing = computing if computes else nullcontext  # counted among the calls sharing the cores
        # The node's turn, shared with the other processes' workers (see turns.py): while
        # it holds the turn a worker may use every core of the node.
        self.turn = open_turn(spec.device) if computes and plan.turns else None
        # How many threads each call computes with (OPs that compute; see threads.py). An
        # OP that does not compute on the device (tokenize) runs torch on one thread, so
        # its thread never opens an OpenMP team beside the compute thread's.
        if computes:
            most = node_cores() if self.turn else (None if plan.team else 1)
            self.policy = ThreadPolicy(plan.threads, most=most)
        else:
            self.policy = ThreadPolicy(1)

    @property
    def last(self) -> int:
        return self.policy.last

    def adopt(self, op: Op) -> None:
        if op.thread_exact and self.policy.setting == "auto":
            # Its outputs change with the thread count (a convolution that splits its sums
            # between threads): one count always, so the same request gives the same bytes.
            self.policy = ThreadPolicy(self.policy.most, most=self.policy.most)

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self.turn or nullcontext(), self._computing():
            yield

    def choose(self, kind: str, rows: int) -> int:
        return self.policy.choose(kind, rows)

    def record(self, kind: str, rows: int, threads: int, seconds: float, units: int) -> None:
        self.policy.record(kind, rows, threads, seconds, units=units)

    def between_steps(self) -> None:
        if self.turn is not None:
            self.turn.pass_on()  # another process's call goes between two steps

    def keep_stepping(self, rows: int, threads: int, steps: int, took: float) -> bool:
        if not super().keep_stepping(rows, threads, steps, took):
            return False  # another call waits for the device's turn
        if not threads:
            return True
        if steps == 1 and self.policy.gives_up("step", rows, threads, took):
            return False  # a try that clearly lost its first step costs no more steps
        return not self.policy.crowded(threads)  # another call started beside this one: share the cores

    def close(self) -> None:
        if self.turn is not None:
            self.turn.close()
            self.turn = None
