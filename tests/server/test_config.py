"""The server's configuration: defaults, overrides, and one clear error per mistake."""
from __future__ import annotations

import copy

import pytest

from tessera.server.config import AppConfig, served_graph
from tessera.server.defaults import DEFAULT_CONFIG
from tessera.server.engine import ConfigError
from tessera.server.main import load_config


def test_defaults_serve_the_bundled_model_on_loopback():
    cfg = load_config(None, None, None, None)
    assert (cfg.server.host, cfg.server.port, cfg.server.metrics_port) == ("127.0.0.1", 50051, 9090)
    assert cfg.model_dir is None and cfg.graph.output == "rerank"
    assert cfg.graph.ops["sample"].stepping


def test_command_line_overrides_the_file():
    cfg = load_config(None, "0.0.0.0", 0, -1)
    assert (cfg.server.host, cfg.server.port, cfg.server.metrics_port) == ("0.0.0.0", 0, -1)
    assert cfg.server.http_port == 8080  # the default, documented in the README
    assert load_config(None, None, None, None, http_port=-1).server.http_port == -1


def test_the_model_section_reaches_every_op_unless_it_sets_its_own():
    raw = copy.deepcopy(DEFAULT_CONFIG)
    raw["model"] = {"path": "/models/a", "clip": "ViT-B-32:/c.bin", "dtype": "bfloat16"}
    raw["graph"]["ops"]["decode"]["settings"] = {"model": {"path": "/models/b"}, "dtype": "float32"}
    cfg = AppConfig.from_dict(raw)
    assert cfg.graph.ops["sample"].settings["model"] == {"path": "/models/a", "clip": "ViT-B-32:/c.bin"}
    assert cfg.graph.ops["decode"].settings["model"] == {"path": "/models/b", "clip": "ViT-B-32:/c.bin"}
    assert (cfg.graph.ops["sample"].settings["dtype"], cfg.graph.ops["decode"].settings["dtype"]) == (
        "bfloat16", "float32")
    assert "dtype" not in cfg.graph.ops["tokenize"].settings  # it computes with no model
    # The OP gets the one description as it is: the section's keys, a ModelSpec.
    from tessera.ops.families import ModelSpec
    from tessera.server.engine.settings import parse_settings
    sample = cfg.graph.ops["sample"]
    assert parse_settings(sample.op_class.Settings, sample.settings).model == ModelSpec(
        path="/models/a", clip="ViT-B-32:/c.bin") == cfg.served[0].spec


def test_model_dtype_reaches_every_model_op_and_dtype_on_the_command_line_forces_it(tmp_path, monkeypatch):
    """`model.dtype` is each model OP's precision unless the OP sets its own; `tessera serve
    --dtype` forces one on every OP; a precision no platform has is one error naming the key."""
    import yaml

    from tessera.ops.info import op_precisions
    from tessera.server.engine.platforms import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    raw = copy.deepcopy(DEFAULT_CONFIG)
    raw["model"] = {"dtype": "bfloat16"}
    raw["graph"]["ops"]["decode"]["settings"] = {"dtype": "float32"}
    cfg = AppConfig.from_dict(raw)
    assert cfg.graph.ops["sample"].settings["dtype"] == "bfloat16"
    assert op_precisions(cfg.graph) == {"sample": "bfloat16", "decode": "float32", "clip_text": "bfloat16",
                                        "rerank": "bfloat16"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    forced = load_config(str(path), None, None, None, model={"dtype": "float32"})
    assert set(op_precisions(forced.graph).values()) == {"float32"}
    # auto: the bundled model stays float32 on this CPU; a min-dalle model takes bfloat16
    assert set(op_precisions(load_config(None, None, None, None).graph).values()) == {"float32"}
    raw["model"] = {"dtype": "fp8"}
    with pytest.raises(ConfigError, match="model.dtype"):
        AppConfig.from_dict(raw)
    raw["model"] = {}
    raw["graph"]["ops"]["decode"]["settings"] = {"dtype": "half"}
    with pytest.raises(ConfigError, match="dtype: must be one of auto, float32, bfloat16, float16; got 'half'"):
        AppConfig.from_dict(raw)


def test_served_graph_is_the_graph_serve_serves_with_the_given_model():
    """What the offline pipeline runs: the shipped graph, or a file's, its model as serve reads it."""
    def model_dirs(graph) -> set:
        return {op.settings["model"].get("path") for op in graph.ops.values()}  # every shipped OP takes one
    assert served_graph() == load_config(None, None, None, None).graph
    only_graph = {"graph": DEFAULT_CONFIG["graph"]}
    assert model_dirs(served_graph({**only_graph, "model": "/models/a"})) == {"/models/a"}  # `model: PATH`
    assert model_dirs(served_graph({**only_graph, "model_dir": "/models/a"})) == {"/models/a"}  # the older key
    assert model_dirs(served_graph({**only_graph, "model": {"path": "/models/a"}}, model_dir="/models/b",
                                   clip="ViT-B-32:/c.bin")) == {"/models/b"}
    with pytest.raises(ConfigError, match="model.clip"):
        served_graph(clip="no-arch")


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["server"].update(limits={"max_num_images": 0}), "server.limits.max_num_images"),
    (lambda c: c["server"].update(limits={"max_images": 4}), "server.limits.max_images"),
    (lambda c: c["server"].update(tls_cert_file="/x.pem"), "server.tls_cert_file"),
    (lambda c: c["server"].update(colour="red"), "server.colour"),
    (lambda c: c["server"].update(http_port=-2), "server.http_port"),
    (lambda c: c["graph"]["ops"]["decode"].update(settings={"dtype": "yes"}),
     "graph.ops.decode.settings.dtype: must be one of auto, float32, bfloat16, float16; got 'yes'"),
    (lambda c: c["graph"]["ops"]["sample"].update(settings={"static_batching": 1}),
     "graph.ops.sample.settings.static_batching: must be true or false"),
    (lambda c: c["graph"]["ops"]["tokenize"].update(settings={"dtype": "float32"}),
     "graph.ops.tokenize.settings.dtype: unknown key; expected one of ['model']"),
    (lambda c: c["graph"]["ops"]["rerank"].update(inputs={"images": "decode"}),
     "graph.ops.rerank.inputs.text_embedding: is required"),
    (lambda c: c["graph"]["ops"]["rerank"].update(inputs=["decode", "clip_text"]),
     "graph.ops.rerank.inputs: RerankOp takes its inputs by name"),
    (lambda c: c["graph"].update(output="nowhere"), "graph.output"),
])
def test_mistakes_name_their_key(mutate, key):
    raw = copy.deepcopy(DEFAULT_CONFIG)
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        AppConfig.from_dict(raw)
    assert info.value.key == key.split(":")[0]  # where given, the message follows the key
    assert str(info.value).startswith(key)


def test_missing_token_source_is_a_config_error(monkeypatch):
    from tessera.server.rpc.auth import load_token
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_TOKEN_VAR"):
        load_token(None, "NO_SUCH_TOKEN_VAR")
    assert load_token(None, None) is None
