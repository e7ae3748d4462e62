"""Workers that die under load, seen from a client: kill -9 of the sampler's and the
decoder's child processes loses no request, changes no image, and the server reports
NOT_SERVING only while an OP has no live worker."""
from __future__ import annotations

import asyncio
import os
import signal

from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.server.config import AppConfig
from tests.server.rpc.conftest import raw_config, serving

PROMPTS = ["a small red circle in the top left on a blue background", "a large green square at the bottom",
           "a blue triangle on a white background", "a yellow diamond in the middle"]


def process_config(model_dir) -> AppConfig:
    raw = raw_config(model_dir, metrics_port=-1, http_port=-1)
    for op in ("sample", "decode"):
        raw["graph"]["ops"][op]["mode"] = "process"
    return AppConfig.from_dict(raw)


async def _load(client, streamed: asyncio.Event | None = None) -> list[list[bytes]]:
    async def one(i: int, prompt: str) -> list[bytes]:
        if i == 0 and streamed is not None:
            async for event in client.generate_stream(prompt, num_images=2, num_candidates=4, seed=11):
                if getattr(event, "stage", None) == "sample":
                    streamed.set()  # rows are in the sampler's running batch
                    continue
                if hasattr(event, "images"):
                    return [im.png for im in event.images]
        gen = await client.generate(prompt, num_images=2, num_candidates=4, seed=11 + i)
        return [im.png for im in gen.images]
    return await asyncio.gather(*(one(i, p) for i, p in enumerate(PROMPTS * 2)))


async def test_kill_9_of_process_workers_loses_nothing_and_changes_no_image(tiny_model_dir):
    async with serving(process_config(tiny_model_dir)) as (server, client):
        undisturbed = await _load(client)
        engine = server.engine
        health: list[bool] = []
        serving_again = asyncio.Event()  # every OP has its workers back: both replacements counted

        def health_changed(serving: bool) -> None:
            health.append(serving)
            if serving and False in health:
                serving_again.set()
        engine.on_health_change(health_changed)
        sampler, decoder = engine.stages["sample"].workers[0], engine.stages["decode"].workers[0]
        pids = sampler.pid, decoder.pid
        streamed = asyncio.Event()
        load = asyncio.ensure_future(_load(client, streamed))
        await streamed.wait()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        disturbed = await load  # every admitted request ends OK
        assert disturbed == undisturbed  # byte-identical: rows restarted from their seeds
        # The load can end on the sampler's other worker before the killed one is replaced.
        await asyncio.wait_for(serving_again.wait(), 120)
        assert (sampler.pid, decoder.pid) != pids and None not in (sampler.pid, decoder.pid)
        reg = engine.metrics.registry
        assert reg.get_sample_value("tessera_op_worker_restarts_total", {"model": engine.name, "op": "sample"}) == 1
        assert reg.get_sample_value("tessera_op_rows_retried_total", {"model": engine.name, "op": "sample"}) >= 1
        assert health[0] is False and health[-1] is True
        stub = health_pb2_grpc.HealthStub(client._channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert await _load(client) == undisturbed  # the replaced workers serve
