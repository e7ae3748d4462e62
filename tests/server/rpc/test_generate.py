"""The real server on port 0, the real client: images, seeds, streaming, concurrency."""
from __future__ import annotations

import asyncio

import grpc

from tessera.clients import Generation, ProgressEvent
from tessera.server.config import AppConfig
from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc
from tests.server.engine.toy_ops import until
from tests.server.rpc.conftest import app_config, paced_sampler, raw_config, serving

PROMPT = "a small red circle in the top left on a blue background"


async def test_prompt_returns_requested_pngs_best_first(served):
    _, client = served
    gen = await client.generate(PROMPT, num_images=3, num_candidates=6, seed=5, request_id="req-1")
    assert gen.request_id == "req-1"
    assert len(gen.images) == 3
    for im in gen.images:
        assert im.png.startswith(b"\x89PNG") and im.image.size == (64, 64)
        assert (im.width, im.height) == (64, 64)
    scores = [im.clip_score for im in gen.images]
    assert scores == sorted(scores, reverse=True)
    assert len({im.candidate_index for im in gen.images}) == 3
    assert {t.stage for t in gen.timings} == {"tokenize", "sample", "decode", "clip_text", "rerank"}
    assert gen.total_ms > 0


async def test_same_seed_same_bytes_and_an_image_seed_regenerates_it(served):
    _, client = served
    a = await client.generate(PROMPT, num_images=2, num_candidates=4, seed=77)
    b = await client.generate(PROMPT, num_images=2, num_candidates=4, seed=77)
    assert [im.png for im in a.images] == [im.png for im in b.images]
    for im in a.images:
        again = await client.generate(PROMPT, num_candidates=1, seed=im.seed)
        assert again.images[0].png == im.png


async def test_server_picks_a_seed_when_none_is_given(served):
    _, client = served
    gen = await client.generate(PROMPT)
    assert gen.images[0].seed != 0
    assert (await client.generate(PROMPT, seed=gen.images[0].seed)).images[0].png == gen.images[0].png


async def test_stream_reports_stages_and_sampler_progress_then_one_result(served):
    _, client = served
    events = [e async for e in client.generate_stream(PROMPT, num_candidates=2, seed=3, preview_every=16)]
    progress, results = events[:-1], [e for e in events if isinstance(e, Generation)]
    assert len(results) == 1 and isinstance(events[-1], Generation)
    assert all(isinstance(e, ProgressEvent) for e in progress)
    sampler = [e for e in progress if e.stage == "sample"]
    assert [e.completed for e in sampler] == sorted(e.completed for e in sampler)
    assert sampler[-1].completed == sampler[-1].total == 2 * 64
    previews = [e.preview for e in sampler if e.preview_png]
    assert previews and all(p.size == (64, 64) for p in previews)
    assert {"tokenize", "decode", "clip_text", "rerank"} <= {e.stage for e in progress}


async def test_64_concurrent_requests_each_get_their_own_images(served):
    _, client = served
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    shapes = ["circle", "square", "diamond", "triangle"]
    prompts = [f"a {colors[i % 8]} {shapes[i // 8 % 4]} on the {'left' if i < 32 else 'right'}" for i in range(64)]
    gens = await asyncio.gather(*(client.generate(p, num_candidates=2, seed=100 + i, request_id=f"c{i}")
                                  for i, p in enumerate(prompts)))
    assert [g.request_id for g in gens] == [f"c{i}" for i in range(64)]
    assert [g.images[0].seed for g in gens] == [100 + i if g.images[0].candidate_index == 0
                                                else g.images[0].seed for i, g in enumerate(gens)]
    # Each image is the one its own request makes alone.
    for i in (0, 17, 63):
        alone = await client.generate(prompts[i], num_candidates=2, seed=100 + i)
        assert alone.images[0].png == gens[i].images[0].png


async def test_get_info_describes_model_limits_and_defaults(served):
    _, client = served
    info = await client.info()
    assert (info.image_width, info.image_height) == (64, 64)
    assert info.text_context == 32
    assert info.limits["max_num_candidates"] == 64 and info.limits["max_num_images"] == 16
    assert info.defaults["temperature"] > 0
    assert ("red", "红色") in info.vocabulary["colors"] and ("circle", "圆形") in info.vocabulary["shapes"]
    assert ("small", "小的") in info.vocabulary["sizes"] and ("in the top left", "左上角") in info.vocabulary["positions"]


async def test_get_info_puts_the_shapes_words_in_the_familys_field_and_the_deprecated_one(served):
    """ServerInfo.shapes carries the bundled family's words; the top-level vocabulary (field 8,
    deprecated) the same words, for clients from before it."""
    server, _ = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = await pb_grpc.ImageGenerationStub(channel).GetInfo(pb.GetInfoRequest())
    assert info.WhichOneof("family") == "shapes"
    assert ("red", "红色") in [(t.en, t.zh) for t in info.shapes.vocabulary.colors]
    assert info.vocabulary == info.shapes.vocabulary


async def test_response_names_the_prompt_words_the_model_does_not_know(served):
    _, client = served
    gen = await client.generate("a photo of a red cat", seed=3)
    assert gen.unknown_words == ["photo", "of", "cat"] and len(gen.images) == 1
    assert (await client.generate(PROMPT, seed=3)).unknown_words == []
    events = [e async for e in client.generate_stream("一只红色的猫", seed=3)]
    assert events[-1].unknown_words == ["一只", "的猫"]


async def test_renaming_an_op_in_the_yaml_keeps_the_graph_and_its_images(tiny_model_dir, served):
    """rerank takes `images` and `text_embedding` by its own names: `decode` may be called anything."""
    _, client = served
    before = await client.generate(PROMPT, num_images=2, num_candidates=3, seed=21)
    raw = raw_config(tiny_model_dir)
    ops = raw["graph"]["ops"]
    ops["vq_decode"] = ops.pop("decode")
    ops["rerank"]["inputs"]["images"] = "vq_decode"
    async with serving(AppConfig.from_dict(raw)) as (_, renamed):
        after = await renamed.generate(PROMPT, num_images=2, num_candidates=3, seed=21)
    assert [im.png for im in after.images] == [im.png for im in before.images]
    assert {t.stage for t in after.timings} == {"tokenize", "sample", "vq_decode", "clip_text", "rerank"}


async def test_two_sampler_workers_give_the_images_one_gives(tiny_model_dir, monkeypatch):
    """The shipped sampler has two workers; past half a batch in flight the rows split
    between them (both are inside a step at once), and every image is the one a single
    worker computes for the same seed, byte for byte."""
    async def images(client) -> list[bytes]:
        gens = await asyncio.gather(*(client.generate(PROMPT, num_images=1, num_candidates=4, seed=70 + i)
                                      for i in range(12)))  # 48 rows: more than half of 64
        return [g.images[0].png for g in gens]

    steps = paced_sampler(monkeypatch)
    two = app_config(tiny_model_dir)
    assert two.graph.ops["sample"].concurrency == 2
    async with serving(two) as (_, client):
        load = asyncio.ensure_future(images(client))
        await until(lambda: steps.waiting == 2, "both sampler workers inside a step at once")
        steps.free()
        split = await load
    one = raw_config(tiny_model_dir, metrics_port=-1, http_port=-1)
    one["graph"]["ops"]["sample"]["concurrency"] = 1
    async with serving(AppConfig.from_dict(one)) as (_, client):
        assert await images(client) == split
