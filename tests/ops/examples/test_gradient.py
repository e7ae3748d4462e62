"""The example pipeline of docs/pipelines.md, served from its own YAML as a user serves it,
and called over gRPC (unary and streaming) and HTTP; GetInfo says what it is."""
from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tessera.clients import Generation, TesseraError
from tessera.ops.examples.gradient import COLORS, PaintOp
from tessera.server.config import AppConfig
from tests.server.rpc.conftest import serving

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy" / "examples" / "gradient.yaml"


class UndescribedPaintOp(PaintOp):
    """The example's output OP without its `describe`: a graph that says nothing of itself."""
    describe = None


def example_config(**ops) -> AppConfig:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["server"].update(port=0, http_port=0, metrics_port=-1)  # every listener on a free port
    for name, changes in ops.items():
        raw["graph"]["ops"][name].update(changes)
    return AppConfig.from_dict(raw)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


async def test_the_example_paints_its_colours_over_grpc_and_http_and_says_what_it_is():
    async with serving(example_config()) as (server, client):
        info = await client.info()
        gen = await client.generate("red to blue", num_images=3, seed=11)
        events = [e async for e in client.generate_stream("red to blue", num_images=3, seed=11)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=60) as http:
            reply = await http.post("/v1/generate", json={"prompt": "red to blue", "numImages": 3, "seed": "11"})
            http_info = (await http.get("/v1/info")).json()
            refused = await http.post("/v1/generate", json={"prompt": "a cat"})
    # GetInfo describes the example, not the bundled shapes model
    assert (info.model_name, info.model_kind, info.image_width, info.text_context) == ("gradient", "example", 64, 0)
    assert [en for en, _ in info.vocabulary["colors"]] == list(COLORS) and not info.vocabulary["shapes"]
    assert not info.rerank and info.details["pipeline"] == "palette -> paint"
    assert (http_info["modelName"], http_info["modelKind"]) == ("gradient", "example")
    # each image runs from red to blue: its two extreme pixels are the two colours
    assert [im.seed for im in gen.images] == [11, 12, 13]
    for im in gen.images:
        corners = pixels(im.png)[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert {tuple(c) for c in corners} & {COLORS["red"], COLORS["blue"]}
    # the same seeds give the same bytes on every door
    streamed = events[-1]
    assert isinstance(streamed, Generation)
    assert [im.png for im in streamed.images] == [im.png for im in gen.images]
    assert [base64.b64decode(im["png"]) for im in reply.json()["images"]] == [im.png for im in gen.images]
    # the first OP's from_request refuses what it cannot map, naming the field
    assert refused.status_code == 400 and "prompt names no colour" in refused.json()["message"]


async def test_batches_rows_from_several_requests_and_refuses_over_the_limit():
    async with serving(example_config()) as (server, client):
        results = await asyncio.gather(*(client.generate(f"{c} to white", num_images=2, seed=5)
                                         for c in ("red", "green", "black")))
        with pytest.raises(TesseraError, match="INVALID_ARGUMENT.*num_images is 17; the limit is 16"):
            await client.generate("red", num_images=17)
    assert [len(r.images) for r in results] == [2, 2, 2]
    assert len({r.images[0].png for r in results}) == 3  # each request got its own colours back


async def test_a_graph_whose_output_says_nothing_is_described_as_serving_no_model(capsys):
    from tessera.clients.cli import main
    config = example_config(paint={"type": "tests.ops.examples.test_gradient:UndescribedPaintOp"})
    async with serving(config) as (server, client):
        info = await client.info()
        assert len((await client.generate("red to blue")).images) == 1  # it still serves
        code = await asyncio.to_thread(main, ["info", "--server", f"127.0.0.1:{server.port}"])
    assert (info.model_name, info.model_kind, info.image_width, info.tokenizer) == ("no model", "", 0, "")
    assert not any(info.vocabulary.values()) and "palette (tessera.ops.examples.gradient:PaletteOp)" in info.details["ops"]
    out = capsys.readouterr().out
    assert code == 0 and "the graph serves no model" in out
    lines = [line.split()[0] for line in out.splitlines()]
    assert "images" not in lines and "prompt" not in lines and "rerank" not in lines and "shapes" not in lines


async def test_tessera_info_says_what_the_example_serves(capsys):
    from tessera.clients.cli import main
    async with serving(example_config()) as (server, _):
        code = await asyncio.to_thread(main, ["info", "--server", f"127.0.0.1:{server.port}"])
    out = capsys.readouterr().out
    assert code == 0 and "gradient (example)" in out and "64 x 64" in out and "colors     red, orange" in out
    assert "prompt     read as colour words" in out and "tokens" not in out and "shapes-dalle" not in out
