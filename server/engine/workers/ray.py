"""Ray workers: each of an OP's workers is a Ray actor, placed by the OP's
`ray_actor_options` (num_cpus, num_gpus, resources, max_restarts, ... as Ray Serve names
them) on any node of the cluster; the actor builds the OP and runs its setup there, so
models load on the actor's node. Ray is an optional extra (`pip install 'tessera[ray]'`).

A stepping call runs up to its step budget inside the actor, so one remote hop carries
several steps; `stop_early` is an actor method the actor's other thread serves while
the step loop polls it. Death is noticed at once: each worker keeps one `watch` call
open on its actor, which fails the moment the actor or its node is lost. The replacement
is the same actor once Ray restarted it (`max_restarts`), else a new one, which waits
for room on the cluster when there is none.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from tessera.server.engine.workers.base import StepCall, StepReply, Worker, WorkerLost, WorkerSpec
from tessera.server.engine.workers.host import OpHost, portable, portable_reply

log = logging.getLogger("tessera.engine")
_LOST = (RayActorError, ActorUnavailableError)


class RayConnection:
    """Joins `address` (a running cluster), or starts a local Ray when it is None; a
    connection made before the engine started (a test's, an application's) is used as is."""

    def __init__(self, address: str | None):
        self.address = address
        self._owned = False

    def open(self) -> None:
        if ray.is_initialized():
            return
        if self.address is None:
            log.info("starting a local Ray for the mode: ray OPs")
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:
            log.info("joining the Ray cluster at %s", self.address)
            ray.init(address=self.address, logging_level=logging.WARNING)
        self._owned = True

    def close(self) -> None:
        if self._owned and ray.is_initialized():
            ray.shutdown()
        self._owned = False


class OpActor:
    """The actor: an OpHost on whichever node Ray placed it.

    Ray serves a threaded actor's calls on a pool of threads, any call on any of them; the
    OP computes on one thread of its own instead. Each thread that calls torch gets an
    OpenMP team of its own, and with more teams than cores libgomp stops spinning between
    parallel regions: a sampler step hopping between three threads ran slower on two
    OpenMP threads than on one."""

    def __init__(self, spec: WorkerSpec):
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tessera-{spec.label}")
        self.host = OpHost(spec)
        self._on_compute(self.host.setup)
        self._stop_for = -1
        self._closed = threading.Event()

    def _on_compute(self, fn, *args):
        return self._compute.submit(fn, *args).result()

    def ready(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def process(self, rows: list[Any], traces: list | None = None) -> tuple[str, Any]:
        try:
            out = [portable(v) for v in self._on_compute(self.host.process, rows, traces)]
            return "ok", (out, self.host.last_spans)
        except Exception as exc:  # noqa: BLE001 - bisected by the engine
            return "err", portable(exc)

    def step(self, call_id: int, call: StepCall) -> StepReply:
        return portable_reply(self._on_compute(self.host.step, call, lambda: self._stop_for == call_id))

    def request_stop(self, call_id: int) -> None:
        self._stop_for = call_id

    def watch(self) -> None:
        """Returns only when the actor closes; fails when it dies: the worker's sentinel."""
        self._closed.wait()

    def close(self) -> None:
        self._closed.set()


class RayWorker(Worker):
    placement = "ray"

    def __init__(self, spec: WorkerSpec, options: dict[str, Any]):
        super().__init__(spec)
        self.options = dict(options)
        self._handle = None
        self._watch: asyncio.Future | None = None
        self._call_id = 0
        self.node_id: str | None = None

    async def start(self) -> None:
        handle = self._handle
        if handle is not None and self.options.get("max_restarts", 0) != 0:
            try:  # Ray restarts the actor itself (its constructor runs setup again)
                self.node_id = await handle.ready.remote()
                self._arm(handle)
                return
            except _LOST:
                pass
        await self.close()
        actor = ray.remote(OpActor).options(
            **self.options, max_concurrency=3,  # a call, its stop request, the watch
            name=None)
        handle = actor.remote(self.spec)
        self._handle = handle
        try:
            self.node_id = await handle.ready.remote()
        except _LOST as exc:
            raise WorkerLost(f"{self.spec.label}: the actor could not start: {exc}") from None
        self._arm(handle)

    def _arm(self, handle) -> None:
        self.lost.clear()
        if self._watch is not None:
            self._watch.cancel()
        self._watch = asyncio.ensure_future(self._watch_actor(handle))

    async def _watch_actor(self, handle) -> None:
        try:
            await handle.watch.remote()
        except _LOST as exc:
            if handle is self._handle:
                log.warning("%s: Ray actor lost: %s", self.spec.label, str(exc).splitlines()[0])
                self._set_lost()

    async def process(self, rows: list[Any], traces: list[dict[str, str] | None] | None = None,
                      rank: tuple | None = None) -> list[Any]:
        status, value = await self._remote(self._handle.process, rows, traces)
        if status == "err":
            raise value
        out, self.last_spans = value
        return out

    async def step(self, call: StepCall) -> StepReply:
        self._call_id += 1
        return await self._remote(self._handle.step, self._call_id, call)

    def stop_early(self) -> None:
        if self._handle is not None:
            self._handle.request_stop.remote(self._call_id)

    def abandon(self) -> None:
        if self._handle is not None:
            log.warning("%s: a call ran past its timeout; killing its Ray actor", self.spec.label)
            ray.kill(self._handle, no_restart=True)
        self._set_lost()

    async def close(self) -> None:
        handle, self._handle = self._handle, None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if handle is not None:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    async def _remote(self, method, *args: Any) -> Any:
        if self.lost.is_set() or self._handle is None:
            raise WorkerLost(f"{self.spec.label} is not running")
        try:
            return await method.remote(*args)
        except _LOST as exc:
            self._set_lost()
            raise WorkerLost(f"{self.spec.label}: {str(exc).splitlines()[0]}") from None
