"""Typed settings: pydantic validation whose every mistake is one ConfigError naming its key.

The configuration's sections are pydantic models (engine/config.py, server/config.py); an
OP's `settings` is a stdlib dataclass the OP class declares, checked by a strict pydantic
model built from its fields:

    @dataclass
    class Settings:
        model_dir: str | None = None
        half: bool = False

    settings = parse_settings(Settings, {"half": True})   # Settings(model_dir=None, half=True)
    parse_settings(Settings, {"half": 1})  # ConfigError: half: must be true or false, got 1

Types are strict (a string is not a bool, 1 is not true). A Settings class may check values
further in `__post_init__`, raising ValueError ("field: what is wrong"); that becomes a
ConfigError naming the field too. `config_error` turns pydantic's ValidationError into our
one line: the dotted key, then what the key must be, never pydantic's own wording.
"""
from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Annotated, Any, Literal

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from tessera.server.engine.errors import ConfigError

TOP = "(top level)"  # the key of a mistake in the whole document


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
    model = settings_model(cls)
    known = sorted(model.model_fields)
    for name in raw:
        if name not in known:
            expected = f"expected one of {known}" if known else "this OP takes no settings"
            raise ConfigError(str(name), f"unknown key; {expected}")
    nested = _nested(cls)
    raw = {name: _plain(value) if name in nested else value for name, value in raw.items()}
    try:
        checked = model.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc, model, raw, prefix="") from None
    try:  # the dataclass fills in its own defaults and runs its __post_init__
        return cls(**{name: _built(nested.get(name), getattr(checked, name)) for name in checked.model_fields_set})
    except ValueError as exc:
        name, _, message = str(exc).partition(": ")
        if name in known and message:
            raise ConfigError(name, message) from None
        raise ConfigError("settings", str(exc)) from None


@functools.cache
def _nested(cls: type) -> dict[str, type]:
    """The settings of `cls` that are dataclasses themselves (`model: ModelSpec`), by name."""
    hints = typing.get_type_hints(cls, include_extras=True)
    found = {}
    for f in fields(cls):
        hint = _non_null(_unwrap(hints[f.name])[0])
        if f.init and isinstance(hint, type) and is_dataclass(hint):
            found[f.name] = hint
    return found


def _plain(value: Any) -> Any:
    """A nested setting as its checked model takes it: a dataclass instance as its fields."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value) if f.init}
    return value


def _built(kind: type | None, value: Any) -> Any:
    """A nested setting's checked model back as its dataclass (the dataclass's own defaults)."""
    if kind is None or not isinstance(value, BaseModel):
        return value
    return kind(**{name: getattr(value, name) for name in value.model_fields_set})


def _field_hint(hint: Any, described: bool) -> Any:
    """A field's type as its checked model takes it: a dataclass (or an optional one) as a
    strict model of its own, so a mapping in the YAML is checked key by key."""
    base = _non_null(_unwrap(hint)[0])
    if not (isinstance(base, type) and is_dataclass(base)):
        return hint
    inner = settings_model(base, described)
    return inner | None if base is not _unwrap(hint)[0] else inner


@functools.cache
def settings_model(cls: type, described: bool = False) -> type[BaseModel]:
    """A strict pydantic model with the dataclass's init fields: types and defaults; described
    (for the schema and the reference), a description where the field's metadata has one
    (`field(metadata={"description": ...})`) or a comment beside it. Validation needs no
    descriptions: it skips reading the classes' source, in every worker process."""
    hints = typing.get_type_hints(cls, include_extras=True)
    comments = _comments(cls) if described else {}
    spec: dict[str, Any] = {}
    for f in fields(cls):
        if not f.init:
            continue
        doc = (f.metadata.get("description") or comments.get(f.name)) if described else None
        hint = _field_hint(hints[f.name], described)
        if hint is not hints[f.name] and (f.default is not MISSING or f.default_factory is not MISSING):
            # A nested dataclass's default, as its checked model (the reference shows its keys).
            made = f.default if f.default is not MISSING else f.default_factory()
            info = Field(default_factory=lambda h=_non_null(hint), d=made: None if d is None else h(**_plain(d)),
                         description=doc)
        elif f.default is not MISSING:
            info = Field(f.default, description=doc)
        elif f.default_factory is not MISSING:
            info = Field(default_factory=f.default_factory, description=doc)
        else:
            info = Field(description=doc)
        spec[f.name] = (hint, info)
    doc = cls.__doc__ if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}(") else None
    return create_model(cls.__name__, __config__=ConfigDict(strict=True, extra="forbid"), __doc__=doc, **spec)


def _comments(cls: type) -> dict[str, str]:
    """A Settings dataclass's fields documented the way our OPs write them: the comment lines
    just above a field and the comment at the end of its line (for the generated reference)."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if is_dataclass(k)]):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines[1:]:
            text = line.strip()
            if text.startswith("#"):
                above.append(text.lstrip("# "))
                continue
            match = re.match(r"(\w+)\s*:[^#]*(?:#\s*(.*))?$", text)
            if match and line.startswith("    ") and not line.startswith("     "):
                parts = [*above, match.group(2) or ""]
                docs[match.group(1)] = " ".join(p for p in parts if p) or docs.get(match.group(1), "")
            above = []
    return {name: doc for name, doc in docs.items() if doc}


def invalid(message: str, key: str | None = None) -> PydanticCustomError:
    """Raise from a validator: `message` becomes the line; `key`, dotted and relative to the
    model being validated, is appended to where pydantic found the mistake."""
    return PydanticCustomError("tessera", "{message}", {"message": message, "key": key})


def config_error(exc: ValidationError, root: type, raw: Any, prefix: str = "") -> ConfigError:
    """The first of pydantic's errors as our ConfigError(key, message), `root` the model
    (or dataclass) that validated `raw`, `prefix` the dotted key `raw` sits at."""
    err = exc.errors(include_url=False)[0]
    loc, kind = list(err["loc"]), err["type"]
    parts, hint, value, whole = _locate(root, raw, loc)
    if kind == "tessera":
        message, extra = err["ctx"]["message"], err["ctx"].get("key")
        parts = [str(p) for p in loc] + (extra.split(".") if extra else [])
    elif kind == "extra_forbidden":
        parts = [str(p) for p in loc]
        message = f"unknown key; expected one of {sorted(_keys(hint))}"
    elif kind == "missing":
        message = "is required"
    elif kind == "string_pattern_mismatch":
        message = f"must match {err['ctx']['pattern']}, got {value!r}"
    elif kind in ("value_error", "assertion_error"):
        message = str(err["ctx"]["error"]) if err.get("ctx") else err["msg"]
    else:  # a wrong type or a value out of its range: say what the key takes
        message = f"must be {describe(hint)}, got {(err['input'] if whole else value)!r}"
    key = ".".join(p for p in [prefix, *parts] if p)
    return ConfigError(key or TOP, message)


def _locate(root: type, raw: Any, loc: list) -> tuple[list[str], Any, Any, bool]:
    """Walk `loc` down the types from `root`: the key's parts, the type found there, the raw
    value there, and whether the whole loc was walked. The walk stops at a union or a list, so
    a mistake inside one names the key that holds it and describes all the key takes (a list
    of sections, `models`, is walked into: the entry's key is named)."""
    hint, value, parts = root, raw, []
    for elem in loc:
        base, _ = _unwrap(_non_null(_unwrap(hint)[0]))
        origin = typing.get_origin(base)
        if isinstance(base, type) and issubclass(base, BaseModel):
            by_alias = {(f.alias or name): f for name, f in base.model_fields.items()}
            if elem not in by_alias:
                return parts, hint, value, False
            hint = _hint_of(by_alias[elem])
        elif isinstance(base, type) and is_dataclass(base):
            hints = typing.get_type_hints(base, include_extras=True)
            if elem not in hints:
                return parts, hint, value, False
            hint = hints[elem]
        elif origin is dict:
            hint = typing.get_args(base)[1] if typing.get_args(base) else Any
        elif origin is list and isinstance(elem, int) and _is_section(typing.get_args(base)):
            hint = typing.get_args(base)[0]  # a list of sections (`models`): name the entry's key
            value = value[elem] if isinstance(value, list) and elem < len(value) else None
            parts.append(str(elem))
            continue
        else:
            return parts, hint, value, False
        parts.append(str(elem))
        value = value.get(elem) if isinstance(value, Mapping) else None
    return parts, hint, value, True


def _is_section(args: tuple) -> bool:
    return len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel)


def _non_null(hint: Any) -> Any:
    """`X | None` -> X, to walk into X; other types as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _hint_of(info: FieldInfo) -> Any:
    """A model field's annotation with its constraints (Field(ge=...)) put back on it."""
    if info.metadata:
        return Annotated[(info.annotation, *info.metadata)]
    return info.annotation


def _keys(hint: Any) -> list[str]:
    base, _ = _unwrap(hint)
    if isinstance(base, type) and issubclass(base, BaseModel):
        return [f.alias or name for name, f in base.model_fields.items()]
    return []


def _unwrap(hint: Any) -> tuple[Any, list[Any]]:
    """Annotated[T, ...] -> (T, its constraints, flattened out of any FieldInfo)."""
    meta: list[Any] = []
    while typing.get_origin(hint) is Annotated:
        args = typing.get_args(hint)
        hint = args[0]
        for m in args[1:]:
            meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    return hint, meta


def describe(hint: Any) -> str:
    """What a key of this type takes, in the words a YAML user reads ("an integer between
    1 and 256", "true or false", "a list of strings")."""
    hint, meta = _unwrap(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin is Literal:
        words = [str(a) for a in args]
        return words[0] if len(words) == 1 else "one of " + ", ".join(words)
    if hint is type(None):
        return "null"
    if origin in (list, tuple):
        plural = {str: "strings", int: "integers", float: "numbers", bool: "true or false values"}
        return f"a list of {plural.get(args[0], describe(args[0]))}" if args else "a list"
    if origin is dict or hint is dict or (isinstance(hint, type) and (
            issubclass(hint, BaseModel) or is_dataclass(hint))):
        return "a mapping"
    if hint is bool:
        return "true or false"
    if hint in (int, float):
        return ("an integer" if hint is int else "a number") + _range(meta)
    if hint is str:
        short = any(isinstance(m, at.MinLen) and m.min_length > 0 for m in meta)
        return "a non-empty string" if short else "a string"
    return getattr(hint, "__name__", str(hint))


def _range(meta: list[Any]) -> str:
    low = next((m.ge for m in meta if isinstance(m, at.Ge)), None)
    high = next((m.le for m in meta if isinstance(m, at.Le)), None)
    above = next((m.gt for m in meta if isinstance(m, at.Gt)), None)
    if low is not None and high is not None:
        return f" between {low} and {high}"
    if low is not None:
        return f" of at least {low}"
    if above is not None:
        return f" above {above}"
    if high is not None:
        return f" of at most {high}"
    return ""
