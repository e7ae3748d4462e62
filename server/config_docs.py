"""`tessera config`: the configuration file's JSON Schema and its reference, from the models.

    tessera config --schema > tessera.schema.json   # for an editor checking a YAML file
    tessera config --docs > docs/configuration.md   # the generated reference
    tessera config --check deploy/ray.yaml          # validate a file as `tessera serve` would

Both are generated from the pydantic models in server/config.py and server/engine/config.py
(types, defaults, constraints, each field's docstring) and, for the shipped OPs' `settings`,
from each OP's Settings dataclass; tests/server/test_config_docs.py fails when
docs/configuration.md is stale.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from typing import Any

from pydantic import BaseModel

from tessera.server.config import AppConfig
from tessera.server.defaults import DEFAULT_CONFIG
from tessera.server.engine import ConfigError
from tessera.server.engine.config import resolve_op_type
from tessera.server.engine.settings import settings_model

REGENERATE = "tessera config --docs > docs/configuration.md"


def shipped_ops() -> list[str]:
    """The OP types of the shipped configuration, whose settings the schema and docs describe."""
    return list(dict.fromkeys(op["type"] for op in DEFAULT_CONFIG["graph"]["ops"].values()))


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the whole configuration file (draft 2020-12)."""
    schema = AppConfig.model_json_schema(by_alias=True)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "Tessera configuration",
              **{k: v for k, v in schema.items() if k != "title"}}
    defs = schema["$defs"]
    _factory_defaults(schema, AppConfig)
    for node in [schema, *defs.values()]:  # an empty section (`server:`) means its defaults
        for name, prop in node.get("properties", {}).items():
            if ("$ref" in prop and name not in node.get("required", ())
                    and not defs[prop["$ref"].rsplit("/", 1)[-1]].get("required")):  # `graph:` empty is no graph
                ref = prop.pop("$ref")
                prop["anyOf"] = [{"$ref": ref}, {"type": "null"}]
    schema["properties"]["model"]["anyOf"].insert(1, {"type": "string", "minLength": 1})  # model: PATH
    # Each shipped OP's settings, as its Settings dataclass takes them (other OPs: any mapping).
    rules = []
    for spec in shipped_ops():
        settings = settings_model(resolve_op_type("type", spec).Settings, described=True)
        defs[settings.__name__] = settings.model_json_schema(ref_template="#/$defs/{model}")
        _factory_defaults(defs[settings.__name__], settings)
        rules.append({"if": {"properties": {"type": {"const": spec}}, "required": ["type"]},
                      "then": {"properties": {"settings": {"$ref": f"#/$defs/{settings.__name__}"}}}})
    defs["OpConfig"]["allOf"] = rules
    return schema


def _factory_defaults(schema: dict, model: type[BaseModel]) -> None:
    """Pydantic leaves a default_factory's value out of the schema; put it in, for every model
    under `model` (a section's default is its keys' defaults, written there)."""
    defs = schema.get("$defs", {})
    todo, seen = [(schema, model)], set()
    while todo:
        node, cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for name, field in cls.model_fields.items():
            prop = node.get("properties", {}).get(field.alias or name)
            inner = _unwrap(field.annotation)
            if isinstance(inner, type) and issubclass(inner, BaseModel) and inner.__name__ in defs:
                todo.append((defs[inner.__name__], inner))
            elif prop is not None and "default" not in prop and not field.is_required():
                value = field.get_default(call_default_factory=True)
                prop["default"] = value.model_dump() if isinstance(value, BaseModel) else value


def _unwrap(annotation: Any) -> Any:
    """A dict's value type or an Optional's type, to find the sections below a key."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is dict:
        return args[1]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def config_docs() -> str:
    """docs/configuration.md: every section and key with its type, default, constraint and
    docstring."""
    schema = config_schema()
    defs = schema["$defs"]
    out = ["# Configuration reference", "",
           f"Generated from the configuration's models by `{REGENERATE}`; do not edit it by hand",
           "(server/config.py, server/engine/config.py, and each OP's `Settings` dataclass).",
           "`tessera config --schema` prints the same as a JSON Schema for an editor to check a YAML",
           "file against; `tessera config --check FILE` validates a file as `tessera serve` would.",
           "deploy/default.yaml is the shipped configuration.", ""]
    _section(out, "(top level)", schema, defs)
    out += ["## OP settings", "",
            "`graph.ops.<name>.settings` is checked against the OP class's `Settings` dataclass. The",
            "shipped OPs take these (the `model` section fills `model` (its `path`, `bpe_path`, `vae`",
            "and `clip`) and `dtype` for every OP that has them, unless the OP sets its own):", ""]
    by_settings: dict[str, list[str]] = {}
    for spec in shipped_ops():
        by_settings.setdefault(resolve_op_type("type", spec).Settings.__name__, []).append(spec)
    for name, specs in by_settings.items():
        _table(out, f"### {name}: " + ", ".join(f"`{spec}`" for spec in specs), defs[name], defs)
    out += ["## The shipped OPs' own values", "",
            "Where a file leaves one of these `graph.ops.<name>` keys out, the OP class's value",
            "(`config_defaults`) is taken instead of the default above; `tessera serve` without",
            "`--config` runs exactly these (tests/server/test_config_docs.py holds the two together).", "",
            "| OP | Keys |", "|---|---|"]
    for spec in shipped_ops():
        own = resolve_op_type("type", spec).config_defaults
        out.append(f"| `{spec}` | " + ", ".join(f"`{k}` {json.dumps(v)}" for k, v in own.items()) + " |")
    out.append("")
    return "\n".join(out).rstrip() + "\n"


def _section(out: list[str], path: str, node: dict, defs: dict) -> None:
    _table(out, f"## `{path}`" if path != "(top level)" else "## Top level", node, defs)
    for key, prop in node.get("properties", {}).items():
        below = f"{key}" if path == "(top level)" else f"{path}.{key}"
        ref = _ref(prop)
        if ref is None and isinstance(prop.get("additionalProperties"), dict):  # a mapping of sections
            ref, below = _ref(prop["additionalProperties"]), f"{below}.<name>"
        if ref is not None:
            _section(out, below, defs[ref], defs)


def _table(out: list[str], title: str, node: dict, defs: dict) -> None:
    out += [title, ""]
    if node.get("description"):
        out += [_one_line(node["description"]), ""]
    out += ["| Key | Type | Default | Constraint | Description |", "|---|---|---|---|---|"]
    required = set(node.get("required", ()))
    for key, prop in node.get("properties", {}).items():
        default = "required" if key in required else (
            "its keys' defaults" if _ref(prop) else f"`{json.dumps(prop['default'])}`" if "default" in prop else "")
        out.append(f"| `{key}` | {_type(prop, defs)} | {default} | {_constraint(prop)} | "
                   f"{_one_line(prop.get('description', ''))} |")
    out.append("")


def _ref(prop: dict) -> str | None:
    for node in [prop, *prop.get("anyOf", ())]:
        if "$ref" in node:
            return node["$ref"].rsplit("/", 1)[1]
    return None


def _type(prop: dict, defs: dict) -> str:
    if "$ref" in prop:
        return "mapping"
    if "anyOf" in prop:
        return " or ".join(dict.fromkeys(_type(p, defs) for p in prop["anyOf"]))
    if "const" in prop:
        return f"`{prop['const']}`"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}), defs)}" if prop.get("items") else "list"
    if kind == "object":
        values = prop.get("additionalProperties")
        return f"mapping of {_type(values, defs)}" if isinstance(values, dict) and values else "mapping"
    return {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean",
            "null": "null"}.get(kind, "any")


def _constraint(prop: dict) -> str:
    parts: list[str] = []
    for node in [prop, *prop.get("anyOf", ()), prop.get("items") or {}]:
        if "minimum" in node and "maximum" in node:
            parts.append(f"{node['minimum']} to {node['maximum']}")
        elif "minimum" in node:
            parts.append(f"≥ {node['minimum']}")
        elif "maximum" in node:
            parts.append(f"≤ {node['maximum']}")
        if node.get("minLength") or node.get("minItems") or node.get("minProperties"):
            parts.append("not empty")
        if "pattern" in node and node["pattern"] != r"\S":
            parts.append(f"`{node['pattern']}`")
    values = prop.get("additionalProperties")
    if isinstance(values, dict) and "minimum" in values:
        parts.append(f"each ≥ {values['minimum']}")
    return ", ".join(dict.fromkeys(parts)).replace("|", "\\|")


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--schema", action="store_true", help="print the configuration file's JSON Schema")
    what.add_argument("--docs", action="store_true", help="print the configuration reference (markdown)")
    what.add_argument("--check", metavar="FILE", help="validate FILE as `tessera serve --config FILE` would")


def run(args: argparse.Namespace) -> int:
    if args.schema:
        print(json.dumps(config_schema(), indent=2))
    elif args.docs:
        print(config_docs(), end="")
    else:
        from tessera.server.main import EXIT_CONFIG, load_config
        try:
            config = load_config(args.check, None, None, None)
        except ConfigError as exc:
            print(f"tessera config: configuration error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"{args.check}: ok ({len(config.graph.ops)} OPs, output {config.graph.output!r})")
    return 0

