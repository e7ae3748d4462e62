"""min-dalle's files served as its users keep them (`model.path` names the directory holding
dalle_bart_mini/ and vqgan/), through the shared sampler: rows of several prompts share steps,
join and leave mid-run, and every image still equals the same request served alone."""
from __future__ import annotations

import asyncio

import pytest

from tessera.bench.checkpoints import build_detoker
from tests.ops.families.min_dalle.conftest import build_root
from tests.server.rpc.conftest import app_config, raw_config, serving

from tessera.server.config import AppConfig


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("min-dalle")
    return build_root(base / "models", build_detoker(base / "detoker.pt"))


def small_batches(root) -> AppConfig:
    """Two sampler rows a step (four slots with their unconditional twins): requests must queue,
    join the running batch as others leave, and share steps with other prompts."""
    raw = raw_config(root)
    raw["graph"]["ops"]["sample"].update(batch_size=2, concurrency=1)
    return AppConfig.from_dict(raw)


@pytest.mark.slow
async def test_the_server_says_what_it_serves(root):
    async with serving(app_config(root)) as (server, client):
        info = await client.info()
        gen = await client.generate("the cat " * 40, seed=2)  # longer than the 64-token context
    assert (info.model_kind, info.model_name) == ("min-dalle", "dalle_bart_mini")
    assert (info.image_width, info.image_height, info.text_context, info.image_tokens) == (256, 256, 64, 256)
    assert info.defaults["top_k"] == 256 and info.defaults["guidance_scale"] == 16
    assert info.tokenizer.startswith("BART BPE") and not info.rerank
    # A 2-layer model in Mini's layout: no speed note of the real Mini, no server path or host memory.
    assert not {"on_a_cpu", "root", "memory_free_at_load_bytes"} & set(info.details)
    assert info.precision["sample"] == info.details["precision"] and set(info.precision) >= {"sample", "decode"}
    assert gen.images[0].width == 256 and not gen.reranked
    assert gen.notes and "cut to 64 tokens" in gen.notes[0]  # cut as min-dalle cuts it, and said so


@pytest.mark.slow
async def test_every_image_under_load_equals_the_same_request_alone(root):
    """Three one-image requests on a sampler of two rows: the second joins while the first is
    32 tokens in, the third waits and joins when the first leaves, mid-run of the second."""
    requests = [("a cat sitting on the mat", 5), ("the dog eats an orange", 6), ("a photo of the hat", 7)]
    async with serving(small_batches(root)) as (server, client):
        started = asyncio.Event()

        async def first():
            async for event in client.generate_stream(requests[0][0], seed=requests[0][1], timeout=600):
                if getattr(event, "stage", "") == "sample" and event.completed >= 32:
                    started.set()
                if not hasattr(event, "stage"):
                    return event
        head = asyncio.create_task(first())
        await started.wait()
        together = [await head, *await asyncio.gather(
            *(client.generate(p, seed=s, timeout=600) for p, s in requests[1:]))]
        alone = [await client.generate(p, seed=s, timeout=600) for p, s in requests]
    for shared, single in zip(together, alone):
        assert shared.images[0].png == single.images[0].png
    assert len({g.images[0].png for g in together}) == 3
