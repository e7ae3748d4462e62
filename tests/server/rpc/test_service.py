"""The service both front doors share knows no model: the served graph's OPs map requests and responses."""
from __future__ import annotations

import ast
import logging
import pickle
from pathlib import Path

import pytest

from tessera.server.config import AppConfig, Limits
from tessera.server.engine import ConfigError, GraphConfig, InvalidInput, Op
from tessera.server.models import ModelSet
from tessera.server.rpc.mapping import PipelineMapping
from tessera.server.rpc.service import GenerationService
from tessera.v1 import image_generation_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]
HERE = "tests.server.rpc.test_service:"


class Shout(Op):
    """A graph's first OP that is no DALL·E: the prompt in capitals."""

    @staticmethod
    def from_request(fields, limits, *, streaming):
        if not fields["prompt"]:
            raise InvalidInput("say something")
        return {"text": fields["prompt"], "times": fields["num_images"] or 1}

    def process(self, rows):
        return [{**r, "text": r["text"].upper()} for r in rows]


class Echoes(Op):
    """Its output OP: the text `times` times, answered as the response's unknown_words."""

    @staticmethod
    def to_response(value):
        return {"unknown_words": [value["text"]] * value["times"], "reranked": False}

    def process(self, rows):
        return rows


class Silent(Op):
    def process(self, rows):
        return rows


def raw_graph(first: str = "Shout", last: str = "Echoes") -> dict:
    return {"output": "echo", "ops": {
        "shout": {"type": HERE + first, "inputs": ["request"]},
        "echo": {"type": HERE + last, "inputs": ["shout"]}}}


def graph(first: str = "Shout", last: str = "Echoes") -> GraphConfig:
    return GraphConfig.from_dict(raw_graph(first, last))


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "server" / "rpc").glob("*.py")) +
                         sorted((ROOT / "server" / "http").glob("*.py")), ids=lambda p: p.name)
def test_the_front_doors_import_no_model(path):
    model = {name for name in imports(path) if name.split(".")[:2] == ["tessera", "ops"]}
    assert not model, f"{path.relative_to(ROOT)} imports {sorted(model)}: the pipeline's OPs map requests"


async def test_a_graph_of_other_ops_maps_its_own_requests_and_responses(caplog):
    models = ModelSet(AppConfig.from_dict({"models": [{"name": "shouting"}], "graph": raw_graph()}))
    await models.start()
    try:
        service = GenerationService(models, Limits())
        with caplog.at_level(logging.INFO, logger="tessera.rpc"):
            reply = await service.generate(pb.GenerateRequest(prompt="hi", num_images=2, request_id="r-1"),
                                           timeout_s=10)
            with pytest.raises(InvalidInput, match="say something"):
                await service.generate(pb.GenerateRequest(request_id="r-2"), timeout_s=10)
        assert service.get_info().model_name == "no model"  # its output OP does not describe itself
    finally:
        await models.stop()
    assert list(reply.unknown_words) == ["HI", "HI"] and not reply.reranked and reply.request_id == "r-1"
    assert {t.stage for t in reply.timings} == {"shout", "echo"}
    lines = [r for r in caplog.records if r.name == "tessera.rpc" and r.getMessage().startswith("request ")]
    assert [(r.request_id, r.outcome, r.images) for r in lines] == [("r-1", "ok", 0), ("r-2", "INVALID_ARGUMENT", 0)]
    assert all(r.levelno == logging.INFO and r.duration_ms >= 0 for r in lines)
    assert " in " in lines[0].getMessage() and lines[0].getMessage().endswith(" ms, 0 images, model shouting")


def test_a_graph_whose_ends_cannot_map_is_refused_at_start_up():
    with pytest.raises(ConfigError, match=r"ops\.shout\.type: .*Silent takes the request but has no from_request"):
        PipelineMapping.of(graph(first="Silent"))
    with pytest.raises(ConfigError, match=r"ops\.echo\.type: .*Silent is the output but has no to_response"):
        PipelineMapping.of(graph(last="Silent"))


def test_the_shipped_graph_maps_with_tokenize_and_rerank():
    from tessera.ops.rerank import RerankOp
    from tessera.ops.tokenize import TokenizeOp
    from tessera.server.defaults import DEFAULT_CONFIG
    mapping = PipelineMapping.of(GraphConfig.from_dict(DEFAULT_CONFIG["graph"]))
    assert (mapping.from_request, mapping.to_response) == (TokenizeOp.from_request, RerankOp.to_response)
    params = mapping.from_request({"prompt": "a red circle", "num_images": 2, "seed": 5}, Limits(), streaming=False)
    assert (params.num_images, params.num_candidates, params.seed, params.temperature) == (2, 2, 5, None)
    with pytest.raises(InvalidInput, match="num_images is 17; the limit is 16"):
        mapping.from_request({"prompt": "a red circle", "num_images": 17}, Limits(), streaming=False)


@pytest.mark.parametrize("fields, named", [
    ({"prompt": ""}, ("prompt",)),
    ({"num_images": 17}, ("num_images",)),
    ({"num_candidates": 65}, ("num_candidates",)),
    ({"num_images": 4, "num_candidates": 2}, ("num_candidates", "num_images")),
    ({"temperature": -1.0}, ("temperature",)),
    ({"top_p": 1.5}, ("top_p",)),
    ({"guidance_scale": -2.0}, ("guidance_scale",)),
    ({"preview_every": 4}, ("preview_every",)),
])
def test_a_refusal_lists_the_fields_it_names_and_keeps_them_across_processes(fields, named):
    """The HTTP door rewords exactly these names; a refusal raised in a worker process arrives
    pickled, and must arrive with them."""
    from tessera.ops.requests import generate_params
    with pytest.raises(InvalidInput) as info:
        generate_params({"prompt": "a red circle"} | fields, Limits(), streaming=False)
    assert info.value.fields == named and all(name in str(info.value) for name in named)
    again = pickle.loads(pickle.dumps(info.value))
    assert (type(again), str(again), again.fields) == (InvalidInput, str(info.value), named)
