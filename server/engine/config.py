"""The graph configuration: typed, validated once at start-up.

    config = GraphConfig.from_dict(yaml.safe_load(open("deploy/default.yaml")))

Every mistake is a ConfigError whose message starts with the key at fault, e.g.
``ops.sample.batch_size: must be at least 1, got 0``.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from tessera.server.engine.errors import ConfigError
from tessera.server.engine.op import Op, SteppingOp
from tessera.server.engine.settings import parse_settings

REQUEST = "request"  # the pseudo-input that names the caller's payload
_MODES = ("thread", "process", "ray")
# The Ray actor options an OP may set, named and meant as Ray Serve's ray_actor_options
# (plus max_restarts): each worker of a `mode: ray` OP is an actor created with them.
RAY_ACTOR_OPTIONS = {"num_cpus": (int, float), "num_gpus": (int, float), "memory": (int, float),
                     "object_store_memory": (int, float), "resources": dict, "accelerator_type": str,
                     "runtime_env": dict, "max_restarts": int}


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
    def parse(cls, key: str, raw: Any, op_class: type[Op]) -> InputMap:
        """`[source]`, `[a, b]` (named after the OPs) or `{name: source}`; checked against
        the names `op_class.Inputs` declares."""
        declared = op_class.Inputs
        names = [f.name for f in fields(declared)] if declared is not None else None
        if isinstance(raw, InputMap):
            raw = raw.by_name
        if isinstance(raw, list):
            if not raw or not all(isinstance(i, str) for i in raw):
                raise ConfigError(key, "must be a non-empty list of OP names (or 'request')")
            if names is None:
                by_name = {source: source for source in raw}
                if len(by_name) != len(raw):
                    raise ConfigError(key, "names an input twice")
            elif len(names) == 1 and len(raw) == 1:
                by_name = {names[0]: raw[0]}
            else:
                example = ", ".join(f"{n}: <op>" for n in names)
                raise ConfigError(key, f"{op_class.__name__} takes its inputs by name; map each to "
                                       f"the OP that feeds it: {{{example}}}")
        elif isinstance(raw, dict):
            if not raw or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
                raise ConfigError(key, "must map each input name to an OP name (or 'request')")
            by_name = dict(raw)
            if names is not None:
                for name in by_name:
                    if name not in names:
                        raise ConfigError(f"{key}.{name}",
                                          f"unknown input; {op_class.__name__} takes {names}")
                for name in names:
                    if name not in by_name:
                        raise ConfigError(f"{key}.{name}",
                                          f"is required: {op_class.__name__} takes {names}; "
                                          "name the OP that feeds it")
            if len(set(by_name.values())) != len(by_name):
                raise ConfigError(key, "names an input twice")
        else:
            raise ConfigError(key, "must be a list of OP names, or a mapping of input name to OP name")
        return cls(by_name, declared)


@dataclass
class OpConfig:
    name: str
    type: str
    # In the YAML: a list of OP names, or {input name: OP name} for an OP that names its
    # inputs (a fan-in OP); an InputMap once validated.
    inputs: InputMap | list[str] | dict[str, str]
    batch_size: int = 1
    batch_timeout_ms: float = 0.0
    concurrency: int = 1
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    mode: str = "thread"
    timeout_ms: float = 0.0          # 0: no limit on one call
    retry: int = 0                   # extra attempts for a row whose call failed
    channel_capacity: int = 256      # requests waiting at this OP's input
    settings: dict[str, Any] = field(default_factory=dict)  # checked against op_class.Settings
    ray_actor_options: dict[str, Any] = field(default_factory=dict)  # mode: ray only
    # Threads one call computes with on the CPU: "auto" measures one thread against all of
    # them per call size and runs the faster (workers/threads.py); a number fixes it.
    threads: Any = "auto"
    op_class: type[Op] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = f"ops.{self.name}"
        _at_least(f"{key}.batch_size", self.batch_size, 1, 65536)
        _at_least(f"{key}.batch_timeout_ms", self.batch_timeout_ms, 0, 60_000)
        _at_least(f"{key}.concurrency", self.concurrency, 1, 256)
        _at_least(f"{key}.timeout_ms", self.timeout_ms, 0, 86_400_000)
        _at_least(f"{key}.retry", self.retry, 0, 10)
        _at_least(f"{key}.channel_capacity", self.channel_capacity, 1, 1_000_000)
        if self.mode not in _MODES:
            raise ConfigError(f"{key}.mode", f"must be one of {_MODES}, got {self.mode!r}")
        if not isinstance(self.devices, list) or not self.devices:
            raise ConfigError(f"{key}.devices", "must be a non-empty list such as [cpu] or [cuda:0, cuda:1]")
        for device in self.devices:
            if not (device == "cpu" or (isinstance(device, str) and device.startswith("cuda")
                                        and device[4:] in ("", ) + tuple(f":{i}" for i in range(64)))):
                raise ConfigError(f"{key}.devices", f"unknown device {device!r}; use cpu or cuda:N")
        if not isinstance(self.settings, dict):
            raise ConfigError(f"{key}.settings", "must be a mapping")
        if self.threads != "auto":
            if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= 1024:
                raise ConfigError(f"{key}.threads", f"must be auto or a number of threads from 1 to 1024, "
                                                    f"got {self.threads!r}")
        self._check_ray(key)
        self.op_class = resolve_op_type(f"{key}.type", self.type)
        self.inputs = InputMap.parse(f"{key}.inputs", self.inputs, self.op_class)
        try:  # the OP's own Settings dataclass; workers build it again from this mapping
            parse_settings(self.op_class.Settings, self.settings)
        except ConfigError as exc:
            where = f"{key}.settings" + ("" if exc.key == "settings" else f".{exc.key}")
            raise ConfigError(where, str(exc).split(": ", 1)[1]) from None

    def _check_ray(self, key: str) -> None:
        opts = self.ray_actor_options
        if not isinstance(opts, dict):
            raise ConfigError(f"{key}.ray_actor_options", "must be a mapping")
        if opts and self.mode != "ray":
            raise ConfigError(f"{key}.ray_actor_options", f"applies to mode: ray only (mode is {self.mode!r})")
        for name, value in opts.items():
            want = RAY_ACTOR_OPTIONS.get(name)
            if want is None:
                raise ConfigError(f"{key}.ray_actor_options.{name}",
                                  f"unknown option; expected one of {sorted(RAY_ACTOR_OPTIONS)}")
            if isinstance(value, bool) or not isinstance(value, want):
                raise ConfigError(f"{key}.ray_actor_options.{name}", f"has the wrong type: {value!r}")
            if isinstance(value, (int, float)) and value < (-1 if name == "max_restarts" else 0):
                raise ConfigError(f"{key}.ray_actor_options.{name}", f"must not be negative, got {value!r}")
        resources = opts.get("resources", {})
        for res, amount in resources.items():
            if not isinstance(res, str) or isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
                raise ConfigError(f"{key}.ray_actor_options.resources",
                                  f"must map resource names to amounts, got {res!r}: {amount!r}")
        if self.mode == "ray" and importlib.util.find_spec("ray") is None:
            raise ConfigError(f"{key}.mode", "mode: ray needs Ray, which is not installed: "
                                             "pip install 'tessera[ray]'")

    @property
    def stepping(self) -> bool:
        return issubclass(self.op_class, SteppingOp)


@dataclass
class GraphConfig:
    ops: dict[str, OpConfig]
    output: str
    default_deadline_ms: float = 60_000.0
    max_inflight: int = 1024
    shutdown_grace_s: float = 30.0
    # Thread-mode workers that share a device take turns on its one compute thread: one
    # call at a time per device, each with all of its cores (or its whole GPU). Off, each
    # worker has its own thread and OPs on a device run at once; on a few CPU cores their
    # OpenMP teams then oversubscribe and every OP slows. When some OP runs in other
    # processes (mode process or ray), every CPU worker also takes its node's turn around
    # each call and step, and computes with all of the node's cores while it holds it
    # (workers/turns.py).
    device_turns: bool = True
    # A stepping OP reports a request's progress at most this often (0: every step); its
    # first step, its last and any step carrying a preview always go out.
    progress_interval_ms: float = 100.0
    # The Ray cluster that `mode: ray` OPs' actors join ("ray://host:10001", "host:6379",
    # "auto"); None starts a local Ray when some OP needs it.
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address):
            raise ConfigError("ray_address", f"must be an address such as ray://head:10001, got {self.ray_address!r}")
        if not isinstance(self.device_turns, bool):
            raise ConfigError("device_turns", f"must be true or false, got {self.device_turns!r}")
        _at_least("default_deadline_ms", self.default_deadline_ms, 1, 86_400_000)
        _at_least("max_inflight", self.max_inflight, 1, 10_000_000)
        _at_least("shutdown_grace_s", self.shutdown_grace_s, 0, 3600)
        _at_least("progress_interval_ms", self.progress_interval_ms, 0, 60_000)
        if not self.ops:
            raise ConfigError("ops", "the graph has no OPs")
        if self.output not in self.ops:
            raise ConfigError("output", f"no OP named {self.output!r}")
        for op in self.ops.values():
            for name in op.inputs:
                if name != REQUEST and name not in self.ops:
                    raise ConfigError(f"ops.{op.name}.inputs", f"no OP named {name!r}")
        if not any(REQUEST in op.inputs for op in self.ops.values()):
            raise ConfigError("ops", f"no OP takes the {REQUEST!r} as input")
        self._check_acyclic()
        reaches = self._reaching_output()
        for name in self.ops:
            if name not in reaches:
                raise ConfigError(f"ops.{name}", f"cannot reach the output {self.output!r}")

    def consumers(self, name: str) -> list[str]:
        return [op.name for op in self.ops.values() if name in op.inputs]

    def _check_acyclic(self) -> None:
        state: dict[str, int] = {}  # 1: on the path, 2: done

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name):] + [name]
                raise ConfigError("ops", "cycle " + " -> ".join(cycle))
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

    @classmethod
    def from_dict(cls, raw: Any) -> GraphConfig:
        if not isinstance(raw, dict):
            raise ConfigError("(top level)", "the configuration must be a mapping")
        top = {f.name for f in fields(cls)}
        _no_unknown("(top level)", raw, top)
        ops_raw = raw.get("ops")
        if not isinstance(ops_raw, dict) or not ops_raw:
            raise ConfigError("ops", "must be a mapping of OP name to its settings")
        op_keys = {f.name for f in fields(OpConfig)} - {"name", "op_class"}
        ops = {}
        for name, body in ops_raw.items():
            if not isinstance(body, dict):
                raise ConfigError(f"ops.{name}", "must be a mapping")
            if name == REQUEST:
                raise ConfigError(f"ops.{name}", f"{REQUEST!r} is reserved for the caller's input")
            _no_unknown(f"ops.{name}", body, op_keys)
            for required in ("type", "inputs"):
                if required not in body:
                    raise ConfigError(f"ops.{name}.{required}", "is required")
            ops[name] = OpConfig(name=name, **_typed(f"ops.{name}", body, OpConfig))
        if "output" not in raw:
            raise ConfigError("output", "is required: the OP whose result answers the request")
        rest = _typed("(top level)", {k: v for k, v in raw.items() if k != "ops"}, cls)
        return cls(ops=ops, **rest)


def _no_unknown(key: str, body: dict, known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        where = "" if key == "(top level)" else f"{key}."
        raise ConfigError(f"{where}{unknown[0]}", f"unknown key; expected one of {sorted(known)}")


def _typed(key: str, body: dict, cls: type) -> dict:
    """Check scalar types against the dataclass annotations before construction."""
    kinds = {"int": int, "float": (int, float), "str": str}
    out = {}
    for f in fields(cls):
        if f.name not in body:
            continue
        value = body[f.name]
        want = kinds.get(str(f.type))
        bad_bool = isinstance(value, bool) and want is not str
        if want is not None and (bad_bool or not isinstance(value, want)):
            prefix = "" if key == "(top level)" else f"{key}."
            raise ConfigError(f"{prefix}{f.name}", f"must be {f.type}, got {value!r}")
        out[f.name] = value
    return out


def _at_least(key: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(key, f"must be between {low} and {high}, got {value!r}")
