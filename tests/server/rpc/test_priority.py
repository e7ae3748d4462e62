"""Priorities through the real model: the image for a seed is the same whatever the request's
priority, whether it waited behind others, overtook them, or was evicted and restarted."""
from __future__ import annotations

import asyncio

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tessera.clients import AsyncTesseraClient
from tessera.clients.client import Generation
from tessera.server.app import TesseraServer
from tessera.server.config import AppConfig, TracingConfig
from tessera.server.tracing import make_provider
from tests.server.rpc.conftest import app_config, raw_config, serving

PROMPT = "a red circle on a blue background"
LOW, URGENT = range(1, 5), range(5, 7)   # the seeds of the priority-10 load, of the priority -10 requests


async def _alone(tiny_model_dir) -> dict[int, bytes]:
    async with serving(app_config(tiny_model_dir)) as (_, client):
        return {seed: (await client.generate(PROMPT, seed=seed)).images[0].png for seed in (*LOW, *URGENT)}


async def _png(client: AsyncTesseraClient, seed: int, priority: int, running: asyncio.Event | None = None) -> bytes:
    async for event in client.generate_stream(PROMPT, seed=seed, priority=priority):
        if isinstance(event, Generation):
            return event.images[0].png
        if running is not None and event.stage == "sample" and event.completed > 0:
            running.set()  # this request's rows are inside the sampler's running batch
    raise AssertionError("the stream ended without a result")


async def test_images_are_byte_identical_whatever_the_priority_and_after_a_preemption(tiny_model_dir):
    alone = await _alone(tiny_model_dir)
    raw = raw_config(tiny_model_dir)
    raw["graph"].update(preempt=True, progress_interval_ms=0)  # every step reports progress
    raw["graph"]["ops"]["sample"].update(batch_size=2, concurrency=1)  # 4 rows wait behind 2 running
    exporter = InMemorySpanExporter()
    provider = make_provider(TracingConfig(sample_ratio=1.0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = TesseraServer(AppConfig.from_dict(raw), tracer_provider=provider)
    port = await server.start()
    client = AsyncTesseraClient(f"127.0.0.1:{port}", timeout=60)
    preempted = 0
    try:
        for attempt in range(5):  # until the urgent ones came while a full batch ran (almost always the first)
            exporter.clear()
            running = asyncio.Event()
            low = [asyncio.create_task(_png(client, seed, 10, running)) for seed in LOW]
            await running.wait()
            urgent = [asyncio.create_task(_png(client, seed, -10)) for seed in URGENT]
            got = dict(zip((*LOW, *URGENT), await asyncio.gather(*low, *urgent)))
            assert got == alone, f"attempt {attempt}: an image changed with its priority or its wait"
            preempted = sum(e.name == "evicted" and e.attributes["tessera.reason"] == "preempted"
                            for span in exporter.get_finished_spans() if span.name == "sample" for e in span.events)
            if preempted:
                break
    finally:
        await client.close()
        await server.stop(2.0)
    assert preempted, "no row was ever preempted: the test did not test a restart"
