"""The offline pipeline is the graph the server serves: built from its configuration, not wired by hand."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from tessera.ops.messages import GenerateParams, RerankInputs
from tessera.ops.pipeline import LocalPipeline
from tessera.server.config import served_graph
from tessera.server.defaults import DEFAULT_CONFIG
from tessera.server.engine import ConfigError

REQUESTS = [GenerateParams("a red circle", num_images=2, num_candidates=3, seed=9, temperature=0.9),
            GenerateParams("a blue square", num_images=1, num_candidates=2, seed=4, guidance_scale=2.0)]


def renamed(config: dict, old: str, new: str) -> dict:
    """`config` with the OP `old` called `new` everywhere the graph names it."""
    graph = config["graph"]
    graph["ops"] = {(new if name == old else name): op for name, op in graph["ops"].items()}
    for op in graph["ops"].values():
        inputs = op["inputs"]
        op["inputs"] = ({k: (new if v == old else v) for k, v in inputs.items()} if isinstance(inputs, dict)
                        else [new if v == old else v for v in inputs])
    if graph["output"] == old:
        graph["output"] = new
    return config


def test_the_graph_gives_the_images_its_ops_give_by_hand(tiny_model_dir):
    pipe = LocalPipeline(served_graph(model_dir=str(tiny_model_dir)), capacity=4)
    out = pipe.generate(REQUESTS)
    by_hand = []
    for request in REQUESTS:
        [tok] = pipe.tokenize.process([request])
        decoded = pipe.decode.process(pipe.sample_rows(pipe.sample.split(tok)))
        [text] = pipe.clip_text.process([tok])
        by_hand += pipe.rerank.process([RerankInputs(images=decoded, text_embedding=text)])
    assert [[im.png for im in r.images] for r in out] == [[im.png for im in r.images] for r in by_hand]
    assert [len(r.images) for r in out] == [2, 1]


def test_it_serves_the_configuration_it_is_given(tiny_model_dir):
    shipped = LocalPipeline(served_graph(model_dir=str(tiny_model_dir)), capacity=4).generate(REQUESTS)
    config = renamed(renamed(copy.deepcopy(DEFAULT_CONFIG), "sample", "sampler"), "rerank", "best")
    config["graph"]["ops"]["decode"]["settings"] = {"forward_mode": "padded", "forward_buckets": [2, 8]}
    config["graph"]["ops"]["sampler"]["batch_size"] = 3
    pipe = LocalPipeline(served_graph({**config, "model": {"path": str(tiny_model_dir)}}))

    assert set(pipe.ops) == {"tokenize", "sampler", "decode", "clip_text", "best"}
    assert pipe.sampler.capacity == 3  # the configured batch_size bounds the running batch
    assert (pipe.decode.settings.forward_mode, pipe.decode.settings.forward_buckets) == ("padded", [2, 8])
    assert all(op.settings.model.path == str(tiny_model_dir)  # the model section reaches every model OP
               for op in pipe.ops.values() if hasattr(op.settings, "model"))
    assert [[im.png for im in r.images] for r in pipe.generate(REQUESTS)] == [
        [im.png for im in r.images] for r in shipped]


def test_arguments_override_the_configured_settings(tiny_model_dir):
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["graph"]["ops"]["decode"]["settings"] = {"forward_mode": "padded"}
    pipe = LocalPipeline(served_graph(config, model_dir=str(tiny_model_dir)), capacity=5, forward_mode="off",
                         decode_mode="off")
    assert pipe.decode.settings.forward_mode == pipe.rerank.settings.forward_mode == "off"
    assert pipe.sample.settings.decode_mode == "off" and pipe.sample.capacity == 5
    with pytest.raises(ConfigError, match="no_such_setting"):
        LocalPipeline(served_graph(model_dir=str(tiny_model_dir)), no_such_setting=1)


def test_a_refused_prompt_raises_its_error(tiny_model_dir):
    pipe = LocalPipeline(served_graph(model_dir=str(tiny_model_dir)), capacity=4)
    with pytest.raises(Exception, match="empty"):
        pipe.tokenized([GenerateParams("!!!")])


def test_a_model_directory_where_the_graph_goes_says_how_to_build_the_graph():
    """What this took before it took a graph: the error names the one line that builds it."""
    with pytest.raises(TypeError, match=r"served_graph\(model_dir=\.\.\.\)"):
        LocalPipeline("ops/bundled/shapes-dalle")


def test_the_ops_import_nothing_of_the_servers_configuration():
    """ops/ is built from an engine GraphConfig: importing every ops module and running a
    pipeline load neither the server's configuration reader nor its shipped defaults (the app
    reads those and imports ops, not the other way round)."""
    root = Path(__file__).resolve().parents[2]
    modules = sorted("tessera.ops." + ".".join(p.relative_to(root / "ops").with_suffix("").parts)
                     for p in (root / "ops").rglob("*.py") if p.name != "__init__.py")
    code = f"""
import importlib, sys
for name in {modules!r}:
    importlib.import_module(name)
from tessera.ops.pipeline import LocalPipeline
from tessera.server.engine import GraphConfig
graph = GraphConfig.from_dict({{"output": "double", "ops": {{
    "add": {{"type": "tests.server.engine.toy_ops:AddOne", "inputs": ["request"]}},
    "double": {{"type": "tests.server.engine.toy_ops:Double", "inputs": ["add"]}}}}}})
assert LocalPipeline(graph).generate([1, 2]) == [4, 6]
print(sorted(m for m in ("tessera.server.config", "tessera.server.defaults") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
