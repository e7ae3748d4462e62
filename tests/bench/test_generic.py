"""The bench's `generic` config: a generic batching server (LitServe) running Tessera's own
OPs (bench/generic.py), started by bench/servers.py's GenericServer and measured by the
bench's HTTP client. Same seeds, same images as the in-process pipeline; a bad request is
a 400 of its own; stopping it leaves nothing behind. No timing is asserted."""
from __future__ import annotations

import asyncio
import base64
import importlib.util
import sys

import httpx
import pytest

from tessera.bench.servers import GenericServer, running_in_group


@pytest.fixture(scope="module")
def generic(tiny_model_dir):
    if importlib.util.find_spec("litserve") is None:
        pytest.fail("litserve is not installed: pip install -e ./bench (the README's test command does)")
    with GenericServer(str(tiny_model_dir), capacity=8) as server:
        yield server
    # SIGTERM ended it gracefully (exit code 0, not a kill), and its whole session is gone:
    # LitServe's API and inference processes too.
    assert server.returncode == 0
    assert running_in_group(server.pgid) == []


async def test_concurrent_requests_get_the_in_process_pipelines_images_for_their_seeds(generic, tiny_model_dir):
    from tessera.ops.messages import GenerateParams
    from tessera.ops.pipeline import LocalPipeline
    from tessera.server.config import served_graph
    bodies = [{"prompt": "a red circle", "seed": 3, "num_candidates": 3, "num_images": 2},
              {"prompt": "a large green square at the bottom", "seed": 11, "num_candidates": 3},
              {"prompt": "蓝色背景上的黄色三角形", "seed": 5, "num_candidates": 2, "temperature": 0.9}]
    async with httpx.AsyncClient(timeout=120) as client:  # together: LitServe may batch them
        answers = await asyncio.gather(*(client.post(generic.target, json=b) for b in bodies))
    pipe = LocalPipeline(served_graph(model_dir=str(tiny_model_dir)), capacity=8)
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        [want] = pipe.generate([GenerateParams(**body)])  # each alone, in this process
        got = answer.json()["images"]
        assert [base64.b64decode(im["png"]) for im in got] == [im.png for im in want.images]
        assert [im["seed"] for im in got] == [im.seed for im in want.images]
        assert [im["clip_score"] for im in got] == pytest.approx([im.clip_score for im in want.images], abs=1e-5)


async def test_the_bench_loops_measure_it_over_http(generic):
    from tessera.bench import closed_loop, open_loop
    params = {"num_candidates": 2, "num_images": 1}
    samples, wall = await closed_loop(generic.target, ["a red circle", "a blue square"], 2, 3, params)
    assert [(s["code"], s["images"], s["candidates"]) for s in samples] == [("OK", 1, 2)] * 3 and wall > 0
    samples, _ = await open_loop(generic.target, ["a red circle"], 40.0, 3, params, bursty=True)
    assert [s["code"] for s in samples] == ["OK"] * 3


async def test_a_bad_request_is_a_400_saying_what_to_change_and_fails_no_other(generic):
    long_prompt = "a red circle " * 30  # within max_prompt_chars; over the text context in tokens
    async with httpx.AsyncClient(timeout=120) as client:
        few = await client.post(generic.target, json={"prompt": "a red circle", "num_images": 4, "num_candidates": 2})
        stray = await client.post(generic.target, json={"prompt": "a red circle", "candidates": 4})
        broken = await client.post(generic.target, content=b'{"prompt": ', headers={"content-type": "application/json"})
        # The tokenizer finds this one in the worker, maybe in one batch with the good request.
        too_long, good = await asyncio.gather(
            client.post(generic.target, json={"prompt": long_prompt, "seed": 2}),
            client.post(generic.target, json={"prompt": "a blue square", "seed": 2, "num_candidates": 2}))
    assert (few.status_code, few.json()) == (400, {"message": "num_candidates (2) must be at least num_images (4)"})
    assert stray.status_code == 400 and stray.json()["message"] == "candidates: Extra inputs are not permitted"
    assert broken.status_code == 400 and broken.json()["message"].startswith("the body is not JSON")
    assert too_long.status_code == 400 and "tokens long; the limit is" in too_long.json()["message"]
    assert good.status_code == 200 and len(good.json()["images"]) == 1


def test_generic_without_litserve_is_one_line_saying_what_to_install(monkeypatch, capsys, tmp_path):
    from tessera.bench import main
    monkeypatch.setitem(sys.modules, "litserve", None)  # what an import finds when it is not installed
    assert main(["--compare", "default,generic", "--concurrency", "1", "--out", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "generic" in line and "pip install -e ./bench" in line
    assert not (tmp_path / "bench.json").exists()  # refused before measuring anything
