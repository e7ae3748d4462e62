"""The configuration's reference and JSON Schema come from its models, and stay current."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tessera.server.cli import main as tessera
from tessera.server.config_docs import REGENERATE, config_docs
from tessera.server.defaults import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parents[2]


def test_the_reference_is_generated_from_the_models():
    assert (ROOT / "docs" / "configuration.md").read_text() == config_docs(), (
        f"docs/configuration.md is stale: run `{REGENERATE}`")


def test_every_key_of_every_section_has_a_description(capsys):
    assert tessera(["config", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    for name, section in schema["$defs"].items():
        for key, prop in section.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{key} has no docstring"


def _schema(capsys) -> dict:
    assert tessera(["config", "--schema"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_shipped_files_meet_the_schema(capsys):
    validator = jsonschema.Draft202012Validator(_schema(capsys))
    configmap = next(d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "tessera.yaml").read_text())
                     if d and d.get("kind") == "ConfigMap")
    for config in (DEFAULT_CONFIG, yaml.safe_load((ROOT / "deploy" / "ray.yaml").read_text()),
                   yaml.safe_load(configmap["data"]["config.yaml"]), {**DEFAULT_CONFIG, "model": "/models/a"}):
        assert not list(validator.iter_errors(config))


@pytest.mark.parametrize("mutate, where", [
    (lambda c: c["graph"]["ops"]["sample"].update(batch_size=0), ["graph", "ops", "sample", "batch_size"]),
    (lambda c: c["server"].update(colour="red"), ["server"]),
    (lambda c: c["graph"]["ops"]["sample"].update(settings={"halff": True}), ["graph", "ops", "sample", "settings"]),
    (lambda c: c["graph"]["ops"]["decode"].update(settings={"forward_buckets": "8"}),
     ["graph", "ops", "decode", "settings", "forward_buckets"]),
    (lambda c: c["graph"]["ops"]["tokenize"].update(threads="all"), ["graph", "ops", "tokenize", "threads"]),
])
def test_an_editor_finds_the_mistakes_the_server_refuses(capsys, mutate, where):
    config = copy.deepcopy(DEFAULT_CONFIG)
    mutate(config)
    errors = list(jsonschema.Draft202012Validator(_schema(capsys)).iter_errors(config))
    assert errors and any(list(e.absolute_path)[:len(where)] == where for e in errors)


def test_check_says_ok_or_names_the_key(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(DEFAULT_CONFIG))
    assert tessera(["config", "--check", str(path)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = copy.deepcopy(DEFAULT_CONFIG)
    bad["graph"]["ops"]["sample"]["concurrency"] = 0
    path.write_text(yaml.safe_dump(bad))
    assert tessera(["config", "--check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tessera config: configuration error: graph.ops.sample.concurrency: "
                   "must be an integer between 1 and 256, got 0"]


def _left_out(config: dict) -> dict:
    """The shipped configuration with every key that has a default left out: each OP's type
    and inputs, and the graph's output, are all a file must say."""
    graph = config["graph"]
    return {"graph": {"output": graph["output"],
                      "ops": {name: {"type": op["type"], "inputs": op["inputs"]} for name, op in graph["ops"].items()}}}


def test_a_file_that_leaves_keys_out_runs_what_tessera_serve_runs():
    # The reference's defaults (and each shipped OP's own values) are what the shipped
    # configuration sets: a YAML written from the reference batches as `tessera serve` does.
    from tessera.server.config import AppConfig
    from tessera.server.engine.config import OpConfig
    shipped = AppConfig.from_dict(copy.deepcopy(DEFAULT_CONFIG))
    bare = AppConfig.from_dict(_left_out(DEFAULT_CONFIG))
    assert bare.server.model_dump() == shipped.server.model_dump()
    assert bare.model.model_dump() == shipped.model.model_dump()
    graph_keys = set(type(shipped.graph).model_fields) - {"ops"}
    assert {k: getattr(bare.graph, k) for k in graph_keys} == {k: getattr(shipped.graph, k) for k in graph_keys}
    for name, op in shipped.graph.ops.items():
        for key in set(OpConfig.model_fields) - {"inputs"}:
            assert getattr(bare.graph.ops[name], key) == getattr(op, key), f"ops.{name}.{key}"
    assert bare.graph.ops["sample"].batch_size == 64  # batching, not the generic 1


def test_the_reference_shows_the_values_the_shipped_configuration_runs():
    text = (ROOT / "docs" / "configuration.md").read_text()
    for key in ("default_deadline_ms", "max_inflight"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
        assert f"`{json.dumps(float(DEFAULT_CONFIG['graph'][key]) if key.endswith('_ms') else DEFAULT_CONFIG['graph'][key])}`" in row
    for op in DEFAULT_CONFIG["graph"]["ops"].values():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{op['type']}` |"))
        for key in ("batch_size", "batch_timeout_ms", "concurrency"):
            if key in op:
                assert f"`{key}` {json.dumps(op[key])}" in row, (op["type"], key)
