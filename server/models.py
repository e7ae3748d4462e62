"""The models a server serves: each one engine of its own, under a name requests give; loaded,
replaced and unloaded while the server serves.

    models = ModelSet(config, registry)
    await models.start()                      # every configured model, the first first
    served = models.get("mini")               # "" names the first; ModelNotFound otherwise
    await models.load(entry)                  # answers once the new version serves
    await models.unload("mini")               # answers once its requests finished and it is freed
    await models.stop(grace_s)

A replacement loads beside the version that serves; once it serves, new requests go to it,
the old engine stops admitting, lets its requests finish (each ends by its own deadline), and is
freed. A load that fails stops its half-started engine and leaves the old version serving. A
request is admitted by one engine, synchronously: no request sees a half-loaded model.
Every engine shares the server's device turns (its OPs and other models' take one device's
turns together), metrics registry (its series carry `model="NAME"`) and Ray connection (a
model unloaded does not take the others' actors down with it).
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from tessera.server.config import AppConfig, ServedModelConfig
from tessera.server.engine import ConfigError, Engine, EngineMetrics, GraphConfig
from tessera.server.engine.platforms import DeviceTurns, compute_for
from tessera.server.rpc.mapping import PipelineMapping, describe_pipeline
from tessera.server.rpc.status import ModelNotFound, ModelRefused, ModelTooLarge

log = logging.getLogger("tessera.server")

# A model is refused when its weight files pass this share of the memory free on its device
# (the sampler checks its cache itself, at setup: ops/sample.py).
FITS_SHARE = 0.9


@dataclass
class ServedModel:
    """One version of a model that serves: its engine, its two ends and what GetInfo says."""
    name: str
    version: str
    entry: ServedModelConfig
    engine: Engine
    mapping: PipelineMapping
    info: dict
    load_ms: float

    @property
    def serving(self) -> bool:
        return self.engine.accepting and self.engine.serving


def model_info(graph: GraphConfig) -> dict:
    """What GetInfo, the page and the start-up line say a graph serves: the output OP's
    description (the DALL·E graph's rerank describes its model), or that it serves no model,
    and each model OP's precision."""
    from tessera.ops.info import op_precisions
    return {**describe_pipeline(graph), "precision": op_precisions(graph)}


class ModelSet:
    def __init__(self, config: AppConfig, registry: CollectorRegistry | None = None):
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.turns = DeviceTurns(shared=True)
        self._models: dict[str, ServedModel] = {}   # what serves, in the configuration's order
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task] = set()
        self._health_listeners: list[Callable[[bool], None]] = []
        self._serving = False
        self._stopped = False
        self._ray = None  # one Ray connection for every model's mode: ray OPs, closed at stop
        # Called with each new engine and its graph before it starts (tracing subscribes there).
        self.on_engine: list[Callable[[Engine, GraphConfig], None]] = []

    # -- what serves -----------------------------------------------------------------------
    def get(self, name: str = "") -> ServedModel:
        """The model `name` names ("" the first), or ModelNotFound naming those served."""
        if not name and self._models:
            return next(iter(self._models.values()))
        found = self._models.get(name)
        if found is None:
            served = ", ".join(repr(n) for n in self._models) or "none"
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise ModelNotFound(f"no model {shown!r} is served here; the models served are {served}"
                                if name else "no model is served here now")
        return found

    def __iter__(self):
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        return len(self._models)

    @property
    def serving(self) -> bool:
        """True while at least one model serves (health's SERVING)."""
        return any(m.serving for m in self._models.values())

    def on_health_change(self, listener: Callable[[bool], None]) -> None:
        self._health_listeners.append(listener)

    def _health_changed(self, _: bool | None = None) -> None:
        serving = self.serving
        if serving != self._serving:
            self._serving = serving
            for listener in self._health_listeners:
                listener(serving)

    # -- loading ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every configured model, in order; the first failure stops those loaded and raises."""
        for entry, graph in zip(self.config.served, self.config.graphs):
            try:
                await self.load(entry, graph, at_start=True)
            except BaseException:
                await self.stop(0)
                raise

    async def load(self, entry: ServedModelConfig, graph: GraphConfig | None = None, *,
                   at_start: bool = False) -> ServedModel:
        """Serve `entry` under its name: a new model, or a new version of the one serving there.
        Answers once it serves; ModelRefused, ModelTooLarge or the start's own error if it cannot
        (the old version, if any, serves on)."""
        lock = self._locks.setdefault(entry.name, asyncio.Lock())
        async with lock:
            start = time.monotonic()
            if graph is None:
                try:
                    graph = self.config.graph_of(entry)
                except ConfigError as exc:
                    raise ModelRefused(str(exc)) from None
            try:
                mapping = PipelineMapping.of(graph)
            except ConfigError as exc:
                raise ModelRefused(f"graph.{exc}") from None
            old = self._models.get(entry.name)
            if not at_start:
                self._check_fits(entry, graph)
            if self._ray is None and any(op.mode == "ray" for op in graph.ops.values()):
                from tessera.server.engine.workers.ray import RayConnection
                self._ray = RayConnection(graph.ray_address)
            engine = Engine(graph, EngineMetrics(self.registry, model=entry.name), name=entry.name,
                            turns=self.turns, ray=self._ray)
            for hook in self.on_engine:
                hook(engine, graph)
            try:
                await engine.start()
                info = await asyncio.get_running_loop().run_in_executor(None, model_info, graph)
            except BaseException as exc:
                await engine.stop(0)
                await asyncio.get_running_loop().run_in_executor(None, _free_memory)  # off the loop, as _retire
                if at_start:
                    raise
                raise _refusal(entry, exc) from exc
            version = entry.version or (_next(old.version) if old is not None else "1")
            served = ServedModel(entry.name, version, entry, engine, mapping, info,
                                 load_ms=1000 * (time.monotonic() - start))
            engine.on_health_change(self._health_changed)
            self._models[entry.name] = served  # from here on new requests go to it
            self._health_changed()
            if old is not None:
                log.info("model %s: version %s serves in %.1f s; version %s finishes its %d requests, then is freed",
                         entry.name, version, served.load_ms / 1000, old.version, len(old.engine.requests))
                self._retire(old, forget=False)
            elif not at_start:
                log.info("model %s: version %s loaded and serving in %.1f s", entry.name, version,
                         served.load_ms / 1000)
            return served

    async def unload(self, name: str) -> ServedModel:
        """Stop serving `name`: new requests get ModelNotFound; those in flight finish, then its
        memory is freed; answers then."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            old = self.get(name) if name else None
            if old is None:
                raise ModelNotFound("name the model to unload")
            del self._models[name]
            self._health_changed()
            log.info("model %s: unloading version %s; %d requests finish first", name, old.version,
                     len(old.engine.requests))
            await self._retire(old, forget=True)
            return old

    def _retire(self, old: ServedModel, *, forget: bool) -> asyncio.Task:
        """Drain `old` (it admits no more; its requests end as they would have), stop it, free it."""
        async def retire() -> None:
            await old.engine.drain()
            await old.engine.stop(0)
            if forget:
                old.engine.metrics.forget()
            await asyncio.get_running_loop().run_in_executor(None, _free_memory)
            log.info("model %s: version %s freed", old.name, old.version)

        task = asyncio.ensure_future(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    async def settled(self) -> None:
        """Wait until every replaced or unloaded version has finished and been freed."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    def _check_fits(self, entry: ServedModelConfig, graph: GraphConfig) -> None:
        """ModelTooLarge when the model's weight files do not fit the memory free on a device
        its OPs compute on (its cache is the sampler's own check, at setup)."""
        from tessera.ops.families import weight_file_bytes
        try:
            need = weight_file_bytes(entry.path)
        except Exception:  # noqa: BLE001 - files that cannot be read: the load says why
            return
        devices = {d for op in graph.ops.values() if op.op_class.uses_device for d in op.devices}
        for device in sorted(devices):
            free = compute_for(device).free_memory()
            if free is not None and need > FITS_SHARE * free:
                raise ModelTooLarge(
                    f"model {entry.name}: its weight files hold {need / 2**30:.2f} GiB and {free / 2**30:.2f} GiB "
                    f"is free on {device} beside the {len(self._models)} models serving; a model of at most "
                    f"{FITS_SHARE * free / 2**30:.2f} GiB fits (unload one, or load it with dtype bfloat16)")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop every engine (each drains within the grace), then the shared device turns."""
        if self._stopped:  # a start that failed stopped them already
            return
        self._stopped = True
        engines = [m.engine for m in self._models.values()]
        await asyncio.gather(*(e.stop(grace_s) for e in engines if e.stages))
        await self.settled()
        # The stopped engines stay named: a call after the drain hears "shutting down"
        # (UNAVAILABLE), never "no such model".
        self.turns.close()
        if self._ray is not None:
            self._ray.close()
            self._ray = None


def _refusal(entry: ServedModelConfig, exc: BaseException) -> Exception:
    """A failed load as the caller hears it: what is wrong with the model, or that it is too big."""
    from tessera.ops.families.base import ModelLoadError
    if isinstance(exc, MemoryError):
        return ModelTooLarge(f"model {entry.name}: {exc}")
    if isinstance(exc, (ModelLoadError, ConfigError, ValueError, OSError)):
        return ModelRefused(f"model {entry.name} cannot load: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def _next(version: str) -> str:
    """The version after `version`: one more where it is a number, else `version`+1 marked."""
    return str(int(version) + 1) if version.isdigit() else f"{version}+1"


def _free_memory() -> None:
    """After a model's engine stopped: collect what it held (models loaded before the server
    froze the heap are unfrozen first) and give freed heap pages back to the system."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps its pages
        pass
