"""An OP's `settings`: a dataclass the OP class declares, built from the YAML mapping.

    @dataclass
    class Settings:
        model_dir: str | None = None
        half: bool = False

    settings = parse_settings(Settings, {"half": True})   # Settings(model_dir=None, half=True)

Names and types are checked against the dataclass's fields before it is built, so a misspelt
key or a wrong type is a ConfigError naming that key, never a TypeError deep in a worker.
A Settings class may check values further in `__post_init__`, raising ValueError
("field: what is wrong"); that becomes a ConfigError naming the field too.
"""
from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any

from tessera.server.engine.errors import ConfigError


@dataclass(frozen=True)
class NoSettings:
    """What an OP that declares no settings accepts: nothing."""


def parse_settings(cls: type, raw: Any) -> Any:
    """`raw` (a mapping, or already a `cls`) -> a `cls`; ConfigError keys are the setting's name."""
    if isinstance(raw, cls):
        return raw
    if not is_dataclass(cls):
        raise TypeError(f"an OP's Settings must be a dataclass, got {cls!r}")
    if not isinstance(raw, Mapping):
        raise ConfigError("settings", f"must be a mapping, got {raw!r}")
    declared = [f for f in fields(cls) if f.init]
    known = sorted(f.name for f in declared)
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():
        if name not in known:
            expected = f"expected one of {known}" if known else "this OP takes no settings"
            raise ConfigError(str(name), f"unknown key; {expected}")
        if not _matches(value, hints[name]):
            raise ConfigError(name, f"must be {_describe(hints[name])}, got {value!r}")
    for f in declared:
        if f.name not in raw and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f.name, "is required")
    try:
        return cls(**raw)
    except ValueError as exc:
        name, _, message = str(exc).partition(": ")
        if name in known and message:
            raise ConfigError(name, message) from None
        raise ConfigError("settings", str(exc)) from None


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        k, v = args if args else (Any, Any)
        return isinstance(value, dict) and all(_matches(a, k) and _matches(b, v) for a, b in value.items())
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if origin in (list, tuple):
        plural = {str: "strings", int: "integers", float: "numbers", bool: "true or false values"}
        return f"a list of {plural.get(args[0], _describe(args[0]))}" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))
