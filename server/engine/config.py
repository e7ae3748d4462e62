"""The graph configuration: typed pydantic models, validated once at start-up.

    config = GraphConfig.from_dict(yaml.safe_load(open("deploy/default.yaml"))["graph"])

Every field has a type, a constraint and a docstring (docs/configuration.md is generated
from them: `tessera config --docs`). Every mistake is a ConfigError whose message starts
with the key at fault, e.g. ``ops.sample.batch_size: must be an integer between 1 and
65536, got 0``.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, Self

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError,
                      WithJsonSchema, field_validator, model_validator)

from tessera.server.engine.errors import ConfigError
from tessera.server.engine.op import Op, SteppingOp
from tessera.server.engine.settings import TOP, config_error, invalid, parse_settings

REQUEST = "request"  # the pseudo-input that names the caller's payload


def resolve_op_type(key: str, spec: str) -> type[Op]:
    """'package.module:ClassName' -> the class, which must subclass Op."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(key, f"expected 'module:Class', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(key, f"unknown OP {spec!r}: cannot import {module_name!r} ({exc})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Op)):
        raise ConfigError(key, f"unknown OP {spec!r}: {module_name} has no Op subclass {attr!r}")
    return cls


class Section(BaseModel):
    """A mapping in the YAML: strict types (a string is not a number, 1 is not true), no
    unknown keys, and an empty section (`server:` with nothing under it) means defaults."""
    model_config = ConfigDict(strict=True, extra="forbid", use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data: Any) -> Any:
        return {} if data is None else data

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """The mapping as YAML gives it -> this section (the whole file for AppConfig, the
        `graph` section for GraphConfig); ConfigError names the key at fault."""
        if not isinstance(raw, dict):
            raise ConfigError(TOP, "the configuration must be a mapping")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise config_error(exc, cls, raw) from None


@dataclass(frozen=True)
class InputMap:
    """Where an OP's inputs come from: its input name -> the OP (or 'request') feeding it.

    Iteration, `in` and `len` see the feeding OPs (the graph's edges); `join` turns one
    request's values, keyed by feeding OP, into what the OP receives, keyed by its own
    names, so renaming an OP in the YAML changes nothing for the OPs it feeds.
    """
    by_name: dict[str, str]
    declared: type | None = None  # the OP's Inputs dataclass, built by join

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def __contains__(self, source: object) -> bool:
        return source in self.by_name.values()

    def join(self, parts: dict[str, Any]) -> Any:
        named = {name: parts[source] for name, source in self.by_name.items()}
        if self.declared is not None:
            return self.declared(**named)
        if len(named) == 1:
            return next(iter(named.values()))
        return named

    @classmethod
    def parse(cls, raw: Any, op_class: type[Op]) -> InputMap:
        """`[source]`, `[a, b]` (named after the OPs) or `{name: source}`; checked against
        the names `op_class.Inputs` declares. Mistakes raise `invalid` keyed under `inputs`."""
        declared = op_class.Inputs
        names = [f.name for f in fields(declared)] if declared is not None else None
        if isinstance(raw, InputMap):
            raw = raw.by_name
        if isinstance(raw, list):
            if not raw or not all(isinstance(i, str) for i in raw):
                raise invalid("must be a non-empty list of OP names (or 'request')", "inputs")
            if names is None:
                by_name = {source: source for source in raw}
                if len(by_name) != len(raw):
                    raise invalid("names an input twice", "inputs")
            elif len(names) == 1 and len(raw) == 1:
                by_name = {names[0]: raw[0]}
            else:
                example = ", ".join(f"{n}: <op>" for n in names)
                raise invalid(f"{op_class.__name__} takes its inputs by name; map each to "
                              f"the OP that feeds it: {{{example}}}", "inputs")
        elif isinstance(raw, dict):
            if not raw or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
                raise invalid("must map each input name to an OP name (or 'request')", "inputs")
            by_name = dict(raw)
            for name in by_name if names is not None else ():
                if name not in names:
                    raise invalid(f"unknown input; {op_class.__name__} takes {names}", f"inputs.{name}")
            for name in names or ():
                if name not in by_name:
                    raise invalid(f"is required: {op_class.__name__} takes {names}; "
                                  "name the OP that feeds it", f"inputs.{name}")
            if len(set(by_name.values())) != len(by_name):
                raise invalid("names an input twice", "inputs")
        else:
            raise invalid("must be a list of OP names, or a mapping of input name to OP name", "inputs")
        return cls(by_name, declared)


NonNegative = Annotated[float, Field(ge=0)]


class RayActorOptions(Section):
    """`mode: ray` only: the options each of the OP's actors is created with, named and
    meant as Ray Serve's `ray_actor_options` (plus `max_restarts`). Left out: Ray's default."""
    num_cpus: NonNegative | None = None
    """CPUs Ray reserves for each actor."""
    num_gpus: NonNegative | None = None
    """GPUs (or a fraction of one) Ray reserves for each actor; the actor sees them as cuda:0..."""
    memory: NonNegative | None = None
    """Bytes of memory Ray reserves for each actor."""
    object_store_memory: NonNegative | None = None
    """Bytes of Ray's object store reserved for each actor."""
    resources: dict[str, NonNegative] | None = None
    """Custom resources each actor needs, by name (e.g. `{tessera_gpu: 0.5}`): places actors on
    the nodes that advertise them."""
    accelerator_type: str | None = None
    """Ray's accelerator type constraint (e.g. A100)."""
    runtime_env: dict[str, Any] | None = None
    """Ray's runtime environment for the actor (env_vars, pip, ...)."""
    max_restarts: Annotated[int, Field(ge=-1)] | None = None
    """Times Ray restarts a lost actor (-1: without end); 0 leaves restarts to the supervisor."""


def _options_as_given(options: RayActorOptions) -> dict[str, Any]:
    # Ray's .options(**...) takes a mapping; keys left out keep Ray's defaults.
    return options.model_dump(exclude_unset=True)


Device = Annotated[str, Field(pattern=r"^(cpu|cuda(:[0-9]+)?)$")]
# In the YAML a list of OP names, or {input name: OP name}; an InputMap once validated.
_INPUTS_SCHEMA = {"anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1},
                            {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 1}]}


def is_device_name(device: Any) -> bool:
    """cpu, cuda or cuda:N (N below 64): what an OP's `devices` and `tessera serve --device` take."""
    return device == "cpu" or (isinstance(device, str) and device.startswith("cuda")
                               and device[4:] in ("", *(f":{i}" for i in range(64))))


class OpConfig(Section):
    """One OP of the graph (`graph.ops.<name>`): its class, where its inputs come from, and
    how its workers batch and run. A key left out takes the OP class's own value where it has
    one (`config_defaults`; the shipped OPs' are listed under OP settings), else the default
    below."""
    type: str = Field(pattern=r"^[\w.]+:\w+$")
    """The OP class, as `package.module:ClassName` (e.g. `tessera.ops.sample:SampleOp`)."""
    inputs: Annotated[Any, WithJsonSchema(_INPUTS_SCHEMA)]
    """The OPs feeding this one (`request` is the caller's input): a list, or `{input name: OP}`
    for an OP that names its inputs (a fan-in OP such as RerankOp)."""
    batch_size: int = Field(1, ge=1, le=65536)
    """Most rows in one call (a stepping OP: most rows in its running batch)."""
    batch_timeout_ms: float = Field(0.0, ge=0, le=60_000)
    """How long a call waits for more rows before running with fewer than batch_size."""
    concurrency: int = Field(1, ge=1, le=256)
    """Workers of this OP per device; each makes its own calls."""
    devices: list[Device] = Field(default_factory=lambda: ["cpu"], min_length=1)
    """Where the workers compute: `cpu`, `cuda` or `cuda:N`; workers are spread over the list."""
    mode: Literal["thread", "process", "ray"] = "thread"
    """Where each worker runs: a thread of the server, a process of its own, or a Ray actor."""
    timeout_ms: float = Field(0.0, ge=0, le=86_400_000)
    """Longest one call may take before its rows fail; 0: no limit."""
    retry: int = Field(0, ge=0, le=10)
    """Extra attempts for a row whose call failed."""
    channel_capacity: int = Field(512, ge=1, le=1_000_000)
    """Requests waiting at this OP's input before the ones upstream wait too."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """The OP's own settings, checked against its class's `Settings` dataclass (see OP settings)."""
    ray_actor_options: Annotated[RayActorOptions, AfterValidator(_options_as_given)] = Field(
        default_factory=dict)
    """`mode: ray` only: what Ray reserves for each actor (Ray Serve's ray_actor_options)."""
    threads: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = "auto"
    """Threads one CPU call computes with: `auto` measures one thread against all of them per
    call size and runs the faster; a number fixes it."""

    _name: str = PrivateAttr("")
    _op_class: type[Op] | None = PrivateAttr(None)

    @property
    def name(self) -> str:
        """The OP's name: its key under `graph.ops`."""
        return self._name

    @property
    def op_class(self) -> type[Op]:
        return self._op_class

    @property
    def stepping(self) -> bool:
        return issubclass(self.op_class, SteppingOp)

    @model_validator(mode="before")
    @classmethod
    def _class_defaults(cls, raw: Any) -> Any:
        """The OP class's own values (`Op.config_defaults`: the shipped OPs' batch sizes) for the
        keys the file leaves out; a key the file sets wins."""
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            return raw
        try:
            op_class = resolve_op_type("type", raw["type"])
        except ConfigError:
            return raw  # the type's own check names the mistake
        return {**op_class.config_defaults, **raw}

    @field_validator("devices", mode="before")
    @classmethod
    def _known_devices(cls, devices: Any) -> Any:
        if not isinstance(devices, list) or not devices:
            raise invalid("must be a non-empty list such as [cpu] or [cuda:0, cuda:1]")
        for device in devices:
            if not is_device_name(device):
                raise invalid(f"unknown device {device!r}; use cpu or cuda:N")
        return devices

    @field_validator("type", mode="before")
    @classmethod
    def _importable(cls, spec: Any) -> Any:
        if isinstance(spec, str):  # a wrong type is pydantic's to report
            try:
                resolve_op_type("type", spec)
            except ConfigError as exc:
                raise invalid(exc.message) from None
        return spec

    @model_validator(mode="after")
    def _resolve(self) -> OpConfig:
        if self.ray_actor_options and self.mode != "ray":
            raise invalid(f"applies to mode: ray only (mode is {self.mode!r})", "ray_actor_options")
        if self.mode == "ray" and importlib.util.find_spec("ray") is None:
            raise invalid("mode: ray needs Ray, which is not installed: pip install 'tessera[ray]'", "mode")
        self._op_class = resolve_op_type("type", self.type)
        self.inputs = InputMap.parse(self.inputs, self._op_class)
        try:  # the OP's own Settings dataclass; workers build it again from this mapping
            parse_settings(self._op_class.Settings, self.settings)
        except ConfigError as exc:
            raise invalid(exc.message,
                          "settings" + ("" if exc.key == "settings" else f".{exc.key}")) from None
        return self


class GraphConfig(Section):
    """The engine's graph (`graph:`): the OPs, how they connect, and the limits every request
    meets."""
    ops: dict[str, OpConfig] = Field(min_length=1)
    """The OPs by name; each names the OPs feeding it in `inputs`."""
    output: str
    """The OP whose result answers the request."""
    default_deadline_ms: float = Field(120_000.0, ge=1, le=86_400_000)
    """A request's deadline when the caller sets none."""
    max_inflight: int = Field(512, ge=1, le=10_000_000)
    """Requests in the graph at once; past it a request is refused as overloaded."""
    shutdown_grace_s: float = Field(30.0, ge=0, le=3600)
    """On SIGTERM, how long requests in flight may finish before they fail."""
    device_turns: bool = True
    """Thread-mode workers that share a device take turns on its one compute thread: one call at
    a time per device, each with all of its cores (or its whole GPU). Off, each worker has its
    own thread and OPs on a device run at once; on a few CPU cores their OpenMP teams then
    oversubscribe and every OP slows. When some OP runs in other processes (mode process or
    ray), every CPU worker also takes its node's turn around each call and step."""
    progress_interval_ms: float = Field(100.0, ge=0, le=60_000)
    """A stepping OP reports a request's progress at most this often (0: every step); its first
    step, its last and any step carrying a preview always go out."""
    ray_address: Annotated[str, Field(min_length=1)] | None = None
    """The Ray cluster that `mode: ray` OPs' actors join (`ray://host:10001`, `host:6379`,
    `auto`); null starts a local Ray when some OP needs it."""
    policy: Literal["fcfs", "priority"] = "priority"
    """The order of every waiting place (channels, row queues, a stepping OP's admission, the
    device's turn): `priority` serves a lower GenerateRequest.priority sooner, ties by arrival,
    with aging (starvation_s); `fcfs` serves by arrival alone."""
    priority_range: list[Annotated[int, Field(ge=-1_000_000, le=1_000_000)]] = Field(
        default_factory=lambda: [-10, 10], min_length=2, max_length=2)
    """[soonest, latest]: the priorities a request may ask for (0, the default, must lie within);
    outside it a request is INVALID_ARGUMENT."""
    starvation_s: float = Field(60.0, gt=0, le=86_400)
    """`policy: priority`: the longest an admitted request waits because of more urgent traffic.
    Waiting raises a request's priority one level every starvation_s / (the range's width)
    seconds, so only requests admitted within starvation_s after it can overtake it."""
    overload_reserve: float = Field(0.25, ge=0, le=1)
    """`policy: priority`: the share of max_inflight kept from requests less urgent than the
    default: priority p > 0 is refused once max_inflight x (1 - overload_reserve x p / latest)
    are in flight, so under overload the least urgent are refused first."""
    preempt: bool = False
    """`policy: priority`: a stepping OP with a full running batch evicts its least urgent row
    for a more urgent waiting one; the evicted row restarts from its seed later (the same
    image). Off: a running row always runs to its end."""

    @field_validator("ops", mode="before")
    @classmethod
    def _named(cls, ops: Any) -> Any:
        if not isinstance(ops, dict) or not ops:
            raise invalid("must be a mapping of OP name to its settings")
        if REQUEST in ops:
            raise invalid(f"{REQUEST!r} is reserved for the caller's input", REQUEST)
        return ops

    @model_validator(mode="after")
    def _connected(self) -> GraphConfig:
        for name, op in self.ops.items():
            op._name = name
        if self.output not in self.ops:
            raise invalid(f"no OP named {self.output!r}", "output")
        for op in self.ops.values():
            for name in op.inputs:
                if name != REQUEST and name not in self.ops:
                    raise invalid(f"no OP named {name!r}", f"ops.{op.name}.inputs")
        low, high = self.priority_range
        if not low <= 0 <= high:
            raise invalid(f"must hold the default priority 0 ([soonest, latest], e.g. [-10, 10]), got "
                          f"{self.priority_range}", "priority_range")
        if not any(REQUEST in op.inputs for op in self.ops.values()):
            raise invalid(f"no OP takes the {REQUEST!r} as input", "ops")
        self._check_acyclic()
        reaches = self._reaching_output()
        for name in self.ops:
            if name not in reaches:
                raise invalid(f"cannot reach the output {self.output!r}", f"ops.{name}")
        return self

    def consumers(self, name: str) -> list[str]:
        return [op.name for op in self.ops.values() if name in op.inputs]

    def _check_acyclic(self) -> None:
        state: dict[str, int] = {}  # 1: on the path, 2: done

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name):] + [name]
                raise invalid("cycle " + " -> ".join(cycle), "ops")
            state[name] = 1
            for nxt in self.consumers(name):
                visit(nxt, path + [name])
            state[name] = 2

        for name in self.ops:
            visit(name, [])

    def _reaching_output(self) -> set[str]:
        seen, todo = set(), [self.output]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(i for i in self.ops[name].inputs if i != REQUEST)
        return seen

