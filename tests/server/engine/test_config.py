"""Configuration mistakes give one clear message naming the key."""
from __future__ import annotations

import pytest

from tessera.server.engine import ConfigError, GraphConfig
from tests.server.engine.helpers import T


def base(**ops_override):
    ops = {"a": {"type": T + "AddOne", "inputs": ["request"]},
           "b": {"type": T + "Double", "inputs": ["a"]}}
    ops.update(ops_override)
    return {"output": "b", "ops": ops}


@pytest.mark.parametrize("raw, key, words", [
    (base(a={"type": T + "Nope", "inputs": ["request"]}), "ops.a.type", "unknown OP"),
    (base(a={"type": "no.such.module:X", "inputs": ["request"]}), "ops.a.type", "unknown OP"),
    (base(b={"type": T + "Double", "inputs": ["zz"]}), "ops.b.inputs", "no OP named 'zz'"),
    (base(a={"type": T + "AddOne", "inputs": ["request", "b"]}), "ops", "cycle"),
    (base(c={"type": T + "AddOne", "inputs": ["a"]}), "ops.c", "cannot reach the output"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "batch_size": 0}), "ops.a.batch_size", "between"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "batch_size": "8"}), "ops.a.batch_size", "must be an integer"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "mode": "fiber"}), "ops.a.mode", "thread"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "devices": ["tpu"]}), "ops.a.devices", "unknown device"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "batchsize": 4}), "ops.a.batchsize", "unknown key"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "threads": "all"}), "ops.a.threads",
     "must be auto or an integer between 1 and 1024, got 'all'"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "threads": 0}), "ops.a.threads", "auto or an integer"),
    (base(a={"inputs": ["request"]}), "ops.a.type", "required"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "ray_actor_options": {"num_cpus": 1}}),
     "ops.a.ray_actor_options", "mode: ray only"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "mode": "ray", "ray_actor_options": {"num_cpu": 1}}),
     "ops.a.ray_actor_options.num_cpu", "unknown key; expected one of ['accelerator_type', "),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "mode": "ray",
             "ray_actor_options": {"resources": {"gpu_node": "1"}}}),
     "ops.a.ray_actor_options.resources.gpu_node", "must be a number of at least 0, got '1'"),
    ({**base(), "output": "zz"}, "output", "no OP named"),
    ({**base(), "max_inflight": -1}, "max_inflight", "between"),
    ({**base(), "extra": 1}, "extra", "unknown key"),
    ({"ops": {}, "output": "a"}, "ops", "mapping"),
    # inputs by name: a fan-in OP's declared names are checked
    (base(b={"type": T + "Difference", "inputs": {"minuend": "a", "subtrahnd": "request"}}),
     "ops.b.inputs.subtrahnd", "unknown input"),
    (base(b={"type": T + "Difference", "inputs": {"minuend": "a"}}), "ops.b.inputs.subtrahend", "required"),
    (base(b={"type": T + "Difference", "inputs": ["a", "request"]}), "ops.b.inputs", "by name"),
    (base(b={"type": T + "Difference", "inputs": {"minuend": "a", "subtrahend": "zz"}}),
     "ops.b.inputs", "no OP named 'zz'"),
    (base(b={"type": T + "Double", "inputs": ["a", "a"]}), "ops.b.inputs", "twice"),
    (base(b={"type": T + "Double", "inputs": "a"}), "ops.b.inputs", "list of OP names"),
    # settings: the OP's Settings dataclass
    (base(a={"type": T + "Counter", "inputs": ["request"], "settings": {"pac": "p"}}),
     "ops.a.settings.pac", "unknown key; expected one of ['pace']"),
    (base(a={"type": T + "Counter", "inputs": ["request"], "settings": {"pace": 1}}),
     "ops.a.settings.pace", "must be a string"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "settings": {"x": 1}}),
     "ops.a.settings.x", "takes no settings"),
])
def test_bad_configuration_names_the_key(raw, key, words):
    with pytest.raises(ConfigError) as info:
        GraphConfig.from_dict(raw)
    assert info.value.key == key
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_good_configuration_builds_typed_ops():
    cfg = GraphConfig.from_dict(base())
    assert cfg.ops["a"].batch_size == 1 and cfg.consumers("a") == ["b"]


def test_fan_in_inputs_map_to_the_declared_names():
    raw = base(b={"type": T + "Difference", "inputs": {"subtrahend": "request", "minuend": "a"}})
    cfg = GraphConfig.from_dict(raw)
    assert list(cfg.ops["b"].inputs) == ["request", "a"] and "a" in cfg.ops["b"].inputs
    assert cfg.ops["b"].inputs.join({"a": 5, "request": 2}).minuend == 5
    assert cfg.consumers("a") == ["b"]


def test_settings_are_typed_on_the_op():
    from tests.server.engine.toy_ops import Counter
    cfg = GraphConfig.from_dict(base(a={"type": T + "Counter", "inputs": ["request"], "settings": {"pace": "p"}}))
    op = cfg.ops["a"].op_class(**cfg.ops["a"].settings)
    assert isinstance(op.settings, Counter.Settings) and op.settings.pace == "p"


def test_mode_ray_without_ray_installed_says_what_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^ops\.a\.mode: .*pip install 'tessera\[ray\]'"):
        GraphConfig.from_dict({"output": "a", "ops": {"a": {"type": T + "AddOne", "inputs": ["request"],
                                                            "mode": "ray"}}})
