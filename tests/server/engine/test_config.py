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
    (base(a={"type": T + "AddOne", "inputs": ["request"], "batch_size": "8"}), "ops.a.batch_size", "must be int"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "mode": "fiber"}), "ops.a.mode", "thread"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "devices": ["tpu"]}), "ops.a.devices", "unknown device"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "batchsize": 4}), "ops.a.batchsize", "unknown key"),
    (base(a={"inputs": ["request"]}), "ops.a.type", "required"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "ray_actor_options": {"num_cpus": 1}}),
     "ops.a.ray_actor_options", "mode: ray only"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "mode": "ray", "ray_actor_options": {"num_cpu": 1}}),
     "ops.a.ray_actor_options.num_cpu", "unknown option"),
    (base(a={"type": T + "AddOne", "inputs": ["request"], "mode": "ray",
             "ray_actor_options": {"resources": {"gpu_node": "1"}}}), "ops.a.ray_actor_options.resources", "amounts"),
    ({**base(), "output": "zz"}, "output", "no OP named"),
    ({**base(), "max_inflight": -1}, "max_inflight", "between"),
    ({**base(), "extra": 1}, "extra", "unknown key"),
    ({"ops": {}, "output": "a"}, "ops", "mapping"),
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
