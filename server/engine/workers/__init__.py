"""An OP's workers: one interface, three placements (thread, process, Ray actor), and
their supervision. `make_worker` builds the one an OpConfig's `mode` names."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tessera.server.engine.workers.base import StepCall, StepReply, Worker, WorkerLost, WorkerSpec
from tessera.server.engine.workers.process import ProcessWorker
from tessera.server.engine.workers.supervision import Supervisor
from tessera.server.engine.workers.thread import ComputeThread, ThreadWorker

__all__ = ["ComputeThread", "ProcessWorker", "StepCall", "StepReply", "Supervisor", "ThreadWorker",
           "Worker", "WorkerLost", "WorkerSpec", "make_worker"]


def make_worker(spec: WorkerSpec, mode: str, *, shared: ComputeThread | None = None,
                on_wait: Callable[[float], None] | None = None,
                ray_actor_options: dict[str, Any] | None = None) -> Worker:
    if mode == "thread":
        return ThreadWorker(spec, shared, on_wait)
    if mode == "process":
        return ProcessWorker(spec)
    if mode == "ray":
        from tessera.server.engine.workers.ray import RayWorker  # Ray is an optional extra
        return RayWorker(spec, ray_actor_options or {})
    raise ValueError(f"unknown worker mode {mode!r}")
