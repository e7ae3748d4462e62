"""The OP interface: what an OP author writes.

A batch OP overrides `setup` and `process`; `process` always takes a list of rows and
returns one result per row, whether the engine batches (batch_size > 1) or not:

    class Upper(Op):
        def process(self, rows):
            return [row.upper() for row in rows]

A request's value at an OP becomes rows through `split` (default: one row) and the
rows' results become the request's output through `merge` (default: the one result).
A result that is an exception instance fails that row alone.

A stepping OP serves iterative work (autoregressive sampling): it owns a running batch,
the engine admits rows between steps, and `step` returns the rows that finished.

An OP declares what it accepts, and start-up checks the YAML against it:

    class Rerank(Op):
        @dataclass
        class Settings:                 # the YAML's `settings:`, typed; self.settings is one
            model_dir: str | None = None

        @dataclass
        class Inputs:                   # a fan-in OP's inputs, by its own names; the YAML
            images: list                # maps each to the OP that feeds it:
            text_embedding: Any         #   inputs: {images: decode, text_embedding: clip_text}

With `Inputs` declared, each request reaches `split` as one `Inputs` instance. Without it,
one input's value arrives as it is, and several arrive as a dict keyed by input name.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tessera.server.engine.settings import NoSettings, parse_settings


class Op:
    """Subclass and override `setup` and `process`. Settings come from the YAML file."""

    name: str = ""
    # False for an OP whose work is neither on the device nor spread over its cores (a
    # tokenizer, a lookup): with graph.device_turns its workers keep a thread of their own
    # instead of waiting for the device's turn behind model calls, and never delay them.
    uses_device: bool = True
    # True (set in setup) for an OP whose outputs change with the number of threads it
    # computes with: its CPU workers then keep one count instead of `threads: auto`'s choice.
    thread_exact: bool = False
    # The OP's own values for its `graph.ops.<name>` keys where the file leaves them out (e.g.
    # {"batch_size": 64}): what batching suits it travels with the class, so a YAML naming
    # only the type and inputs batches as the shipped configuration does.
    config_defaults: ClassVar[Mapping[str, Any]] = {}
    # The dataclass `settings:` must fit (unknown keys and wrong types fail start-up).
    Settings: ClassVar[type] = NoSettings
    # A dataclass whose fields name the OP's inputs (None: the inputs are not named).
    Inputs: ClassVar[type | None] = None

    def __init__(self, **settings: Any):
        self.settings = parse_settings(self.Settings, settings)

    def setup(self, device: str) -> None:
        """Called once per worker, on the worker, before any row: load what you need."""

    def teardown(self) -> None:
        """Called once when the worker closes (its model unloaded or replaced, the server
        stopping): let go of what `setup` holds beyond this object, e.g. a shared model."""

    def split(self, value: Any) -> list[Any]:
        """The rows one request contributes (a prompt with 16 candidates is 16 rows)."""
        return [value]

    def merge(self, value: Any, outputs: list[Any]) -> Any:
        """The request's output from its rows' results, in row order."""
        return outputs[0]

    def process(self, rows: list[Any]) -> list[Any]:
        raise NotImplementedError


@dataclass
class StepRow:
    key: Hashable       # the engine's id for this row; finished rows are reported by it
    value: Any
    trace: dict[str, str] | None = None  # its request's W3C trace context (tracing on), for the worker


@dataclass
class StepProgress:
    completed: int
    total: int
    preview: Any = None


@dataclass
class StepResult:
    finished: dict[Hashable, Any] = field(default_factory=dict)  # key -> result or exception
    progress: dict[Hashable, StepProgress] = field(default_factory=dict)


class SteppingOp(Op):
    """An OP with a running batch: `admit` rows, `step` them, `evict` the cancelled.

    `capacity` (the configured batch_size) bounds the running batch; the engine never
    admits beyond it. All three methods run on the worker, never concurrently.
    """

    capacity: int = 1
    # False: "static" batching, where a running batch finishes before new rows join
    # (only for comparison; iteration-level batching is the point of a stepping OP).
    # The scheduler reads it on the event loop's own instance (built with the settings,
    # never set up), so it must follow from the class or the settings, not from setup.
    joins_mid_run: bool = True

    @classmethod
    def steps_beside(cls, settings: dict[str, Any]) -> bool:
        """Whether, on a CPU, a second worker stepping beside the device's turn on the spare
        cores pays for an OP with these (raw) settings: it does where a step is bound by
        dispatch (a small model: two threads dispatch side by side); where a step is bound by
        reading its weights, two workers each read every weight for half the rows, and hold
        two caches. False: the CPU platform runs one stepping worker per device."""
        return True

    def admit(self, rows: list[StepRow]) -> dict[Hashable, BaseException] | None:
        """Add rows to the running batch; return the rows that could not be admitted."""
        raise NotImplementedError

    def step(self) -> StepResult:
        """Advance every running row by one step; report finished rows and progress."""
        raise NotImplementedError

    def evict(self, keys: list[Hashable]) -> None:
        """Drop rows (cancelled or expired) from the running batch, without a result."""
        raise NotImplementedError

    @property
    def active(self) -> int:
        raise NotImplementedError

    def process(self, rows: list[Any]) -> list[Any]:
        raise TypeError(f"{type(self).__name__} is a stepping OP; the engine steps it")
