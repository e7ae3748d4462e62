"""Platforms: how workers compute on one kind of device, the engine's one view of devices.

The engine, its stages and the scheduler know devices only through this interface. A
stage asks the platform of each worker's device for the worker's `WorkerPlan` (whether it
runs at all, which compute thread it shares, what its worker side needs to know); the
worker side (`OpHost`, in whatever process the worker runs) asks the platform for a
`DeviceHost`, which wraps every call and step.

    platforms = Platforms(graph)               # one per engine
    platforms.open()                           # on the event loop's thread, before workers start
    plan = platforms.of("cpu").plan(cfg, index=0, device="cpu")
    ...
    platforms.close()

An OP asks the platform of its device how to compute there (`Compute`): the precision of
its weights, how a model call runs (eagerly, or compiled or captured per batch size, and
what "auto" means on the device) and how much memory is free:

    compute = compute_for("cuda:0")            # in an OP's setup
    dtype = compute.dtype("auto", "min-dalle")  # float16 on a GPU; bfloat16 on a CPU with bf16 matmuls
    call = compute.bucketed(fn, rows, buckets, compute.call_mode("auto"))

What differs by platform lives in its own module: `cpu.py` (thread counts, OpenMP teams,
device and node turns, the worker stepping beside the turn, float32, eager calls),
`cuda.py` (one stepping worker per GPU, half precision, CUDA graphs: cuda_graphs.py);
`precision.py` (which precision "auto" means where, and the row-invariant kernels it needs).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tessera.server.engine.platforms.buckets import Bucketed
    from tessera.server.engine.workers.thread import ComputeThread
    from tessera.server.engine.config import GraphConfig, OpConfig
    from tessera.server.engine.op import Op
    from tessera.server.engine.workers.base import WorkerSpec


@dataclass
class WorkerPlan:
    """A platform's decision for one worker, read by the stage that builds it."""
    compute: Any = None                    # what the worker side needs (goes in WorkerSpec.compute)
    shared: ComputeThread | None = None    # the device's compute thread, for a thread worker taking turns


class DeviceHost:
    """A worker's side of its platform: what happens around each call and between steps.
    This base has no thread policy and no node turns (a device that needs none); it ends a
    stepping call early when another call waits for the device's turn."""

    last = 0  # the thread count the last call computed with (0: not chosen here)

    def __init__(self, spec: WorkerSpec | None = None, others_waiting: Callable[[], int] | None = None):
        # How many calls wait for the device's turn behind this worker's (None: it takes none).
        self.others_waiting = others_waiting

    def adopt(self, op: Op) -> None:
        """The OP was set up (again): read what the platform needs of it."""

    def hold(self) -> AbstractContextManager:
        """Around a whole call (a batch call, or a stepping call's admission and steps)."""
        return nullcontext()

    def choose(self, kind: str, rows: int) -> int:
        """Set up the call's compute; the thread count chosen (0: none)."""
        return 0

    def record(self, kind: str, rows: int, threads: int, seconds: float, units: int) -> None:
        """How long a call with `threads` (non-zero) took, over `units` rows or steps."""

    def between_steps(self) -> None:
        """Between two steps of one call (a CPU worker hands the node's turn on here)."""

    def keep_stepping(self, rows: int, threads: int, steps: int, took: float) -> bool:
        """After step `steps` (it took `took` s) of a call with `threads` (0: none chosen):
        whether the call may run another step for the device's sake. Not while another call
        waits for the device's turn: it goes between two steps, not after the call's last."""
        return not (self.others_waiting is not None and self.others_waiting())

    def close(self) -> None:
        """Free what the host holds (no call may run)."""


# An OP's `dtype` setting: "auto" (the platform's choice for the OP's model family, where it
# measured faster and keeps the quality contract: docs/models.md, Precision) or one by name.
# float32 reproduces the families' own projects exactly.
DTYPES = ("auto", "float32", "bfloat16", "float16")
# An OP's model call modes (ForwardSettings.forward_mode, SampleSettings.decode_mode): "off"
# (eager), "padded", "compile", "cuda_graph" (the platforms that have them), or "auto".
CALL_MODES = ("off", "padded", "compile", "cuda_graph")


class Compute:
    """What an OP asks the platform of the device it computes on. This base computes "auto" in
    float32, runs "auto" model calls eagerly, padded or compiled buckets on request, and knows
    no free memory; each platform's subclass says what its device does."""

    kind = ""
    auto_mode = "off"                 # what a model call's mode "auto" means on this device
    modes = ("padded", "compile")     # the bucketed modes this device runs

    def __init__(self, device: str):
        self.device = device

    @staticmethod
    def check_dtype(setting: str) -> str:
        if setting not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {setting!r}")
        return setting

    def auto_dtype(self, family: str | None) -> str:
        """What "auto" means on this device for a model of `family` (tessera, dalle-pytorch,
        min-dalle; None: unknown)."""
        return "float32"

    def dtype(self, setting: str = "auto", family: str | None = None) -> torch.dtype:
        """The weights' and activations' dtype for an OP whose `dtype` setting is `setting`,
        serving a model of `family`."""
        import torch
        self.check_dtype(setting)
        return getattr(torch, self.auto_dtype(family) if setting == "auto" else setting)

    def prepare(self, module, dtype: torch.dtype) -> None:
        """Make `module` (loaded in `dtype` on this device) compute each row the same whatever
        the batch's row count, where this device's kernels need it (precision.py)."""

    def call_mode(self, asked: str) -> str:
        """A model call's mode as asked ("auto": this device's `auto_mode`)."""
        return self.auto_mode if asked == "auto" else asked

    def bucketed(self, fn, rows, buckets, mode: str, pad: str = "zero") -> Bucketed:
        """`fn` run at fixed batch sizes in `mode` (platforms/buckets.py); ValueError if this
        device has no such mode."""
        if mode not in self.modes:
            raise ValueError(f"model call mode {mode!r} does not run on {self.device}; "
                             f"it runs {', '.join(('off', *self.modes))}")
        from tessera.server.engine.platforms.buckets import Bucketed
        return Bucketed(fn, rows, buckets, mode, pad)

    def free_memory(self) -> int | None:
        """Bytes free for new tensors on the device; None if unknown."""
        return None


class Platform:
    """One kind of device (`kind`), for one engine's graph. Subclasses decide the plans."""

    kind = ""
    Compute: type[Compute] = Compute  # what its OPs ask of the device

    def __init__(self, graph: GraphConfig, turns: DeviceTurns | None = None):
        self.graph = graph
        # Its devices' compute threads: its own, or those of the engines it serves beside
        # (`turns`: several models' OPs take one device's turns together).
        self._turns = turns or DeviceTurns()
        self._device_threads = self._turns.threads
        self._told: set[str] = set()

    def tell_once(self, cfg: OpConfig, level: int, message: str, *args: Any) -> None:
        """Log `message` for OP `cfg` once, not once per worker the platform leaves out."""
        if cfg.name not in self._told:
            self._told.add(cfg.name)
            logging.getLogger("tessera.engine").log(level, message, *args)

    def plan(self, cfg: OpConfig, index: int, device: str) -> WorkerPlan | None:
        """Worker `index` of OP `cfg` on `device`, or None: the platform runs no such worker."""
        raise NotImplementedError

    @staticmethod
    def host(spec: WorkerSpec, others_waiting: Callable[[], int] | None = None) -> DeviceHost:
        """The worker side, built where the worker runs."""
        return DeviceHost(spec, others_waiting)

    def turn_thread(self, cfg: OpConfig, device: str) -> ComputeThread | None:
        """The compute thread a worker of OP `cfg` on `device` takes turns on: the device's, for
        a thread worker of an OP that computes on the device; None: a thread of its own."""
        if cfg.mode == "thread" and cfg.op_class.uses_device:
            return self.device_thread(device)
        return None

    def device_thread(self, device: str) -> ComputeThread | None:
        """The one compute thread that thread workers on `device` share while device turns
        are on (graph.device_turns): one call at a time per device; None: each its own."""
        if not self.graph.device_turns:
            return None
        if device not in self._device_threads:
            from tessera.server.engine.workers.thread import ComputeThread
            self._device_threads[device] = ComputeThread(f"device-{device}")
        return self._device_threads[device]

    def open(self) -> None:
        """On the event loop's thread, before any worker starts."""

    def close(self) -> None:
        if not self._turns.shared:
            self._turns.close()


class DeviceTurns:
    """The compute threads that thread workers on each device share (Platform.device_thread):
    one engine's own, or, `shared`, those of every engine of a server that serves several
    models, so that their OPs take the device's turns together, as one model's OPs do; the
    server closes those when it stops."""

    def __init__(self, shared: bool = False):
        self.shared = shared
        self.threads: dict[str, ComputeThread] = {}

    def close(self) -> None:
        for thread in self.threads.values():
            thread.close()
        self.threads.clear()


def kind_of(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def platform_class(device: str) -> type[Platform]:
    if kind_of(device) == "cuda":
        from tessera.server.engine.platforms.cuda import CudaPlatform
        return CudaPlatform
    from tessera.server.engine.platforms.cpu import CpuPlatform
    return CpuPlatform


def compute_for(device: str) -> Compute:
    """What an OP computing on `device` asks of its platform (cpu, meta, cuda, cuda:N)."""
    return platform_class(device).Compute(device)


def host_for(spec: WorkerSpec, others_waiting: Callable[[], int] | None = None) -> DeviceHost:
    """The worker side of `spec`'s platform (called where the worker runs); `others_waiting`
    counts the calls queued for the device's turn behind this worker's, if it takes turns."""
    return platform_class(spec.device).host(spec, others_waiting)


class Platforms:
    """An engine's platforms, one per kind of device its graph names. The CPU's is always
    there: the event loop runs on the CPU whatever the OPs compute on."""

    def __init__(self, graph: GraphConfig, turns: DeviceTurns | None = None):
        kinds = {"cpu"} | {kind_of(d) for op in graph.ops.values() for d in op.devices}
        self._by_kind = {kind: platform_class(kind)(graph, turns) for kind in sorted(kinds)}

    def of(self, device: str) -> Platform:
        return self._by_kind[kind_of(device)]

    def turn_thread(self, cfg: OpConfig, device: str) -> ComputeThread | None:
        """The compute thread a worker of OP `cfg` on `device` takes turns on: the device's, for
        a thread worker of an OP that computes on the device; None: a thread of its own."""
        if cfg.mode == "thread" and cfg.op_class.uses_device:
            return self.device_thread(device)
        return None

    def device_thread(self, device: str) -> ComputeThread | None:
        return self.of(device).device_thread(device)

    def open(self) -> None:
        for platform in self._by_kind.values():
            platform.open()

    def close(self) -> None:
        for platform in self._by_kind.values():
            platform.close()


__all__ = ["CALL_MODES", "DTYPES", "Compute", "DeviceHost", "DeviceTurns", "Platform", "Platforms", "WorkerPlan", "compute_for",
           "host_for", "kind_of", "platform_class"]
