"""Every error case returns its status code, with a message a person can act on."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tessera.clients import AsyncTesseraClient, TesseraError
from tessera.server.engine import DeadlineExceeded
from tests.server.engine.toy_ops import until
from tests.server.rpc.conftest import app_config, paced_sampler, serving

PROMPT = "a red circle"


async def code_of(coro) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(TesseraError) as info:
        await coro
    return info.value.code, info.value.details


@pytest.mark.parametrize("kwargs, words", [
    ({"prompt": ""}, "empty"),
    ({"prompt": " \t "}, "empty"),
    ({"prompt": "!!!"}, "empty"),
    ({"prompt": "red " * 60}, "limit is 32 tokens"),
    ({"prompt": "x" * 1001}, "limit is 1000"),
    ({"num_images": 4, "num_candidates": 2}, "at least num_images"),
    ({"num_images": 17}, "limit is 16"),
    ({"num_candidates": 65}, "limit is 64"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.1}, "top_p"),
    ({"guidance_scale": -2.0}, "guidance_scale"),
    ({"preview_every": 4}, "GenerateStream only"),
])
async def test_invalid_arguments(served, kwargs, words):
    _, client = served
    prompt = kwargs.pop("prompt", PROMPT)
    code, details = await code_of(client.generate(prompt, **kwargs))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in details


async def test_invalid_argument_on_the_stream_too(served):
    _, client = served

    async def drain():
        async for _ in client.generate_stream(""):
            pass
    assert (await code_of(drain()))[0] == grpc.StatusCode.INVALID_ARGUMENT


async def test_deadline_exceeded_on_the_server(tiny_model_dir, monkeypatch):
    """The request is held in the sampler and the client sets no deadline, so only the
    server's own (graph.default_deadline_ms) can end it: its path, its message, its count."""
    paced_sampler(monkeypatch)
    config = app_config(tiny_model_dir)
    config.graph.default_deadline_ms = 300
    async with serving(config) as (server, _), \
            AsyncTesseraClient(f"127.0.0.1:{server.port}", timeout=None) as client:
        call = asyncio.create_task(client.generate(PROMPT))
        await until(lambda: server.engine.requests, "the request is admitted")
        (held,) = server.engine.requests.values()
        with pytest.raises(DeadlineExceeded):
            await held.result()
        code, details = await code_of(call)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "deadline of 300 ms" in details
        reg = server.engine.metrics.registry
        await until(lambda: reg.get_sample_value("tessera_requests_total", {"outcome": "deadline_exceeded"}),
                    "the call is counted (as its handler ends, perhaps after the client holds the status)")
        assert reg.get_sample_value("tessera_requests_total", {"outcome": "deadline_exceeded"}) == 1


async def test_overload_is_refused_at_once(tiny_model_dir, monkeypatch):
    steps = paced_sampler(monkeypatch)
    config = app_config(tiny_model_dir)
    config.graph.max_inflight = 2
    async with serving(config) as (server, client):
        busy = [asyncio.create_task(client.generate(PROMPT, seed=i + 1)) for i in range(2)]
        await until(lambda: len(server.engine.requests) == 2, "both requests are admitted")
        code, details = await code_of(client.generate(PROMPT))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "capacity" in details
        steps.free()
        assert [len((await b).images) for b in busy] == [1, 1]  # the admitted ones still finish


async def test_stage_failure_is_internal_and_names_the_stage(served, monkeypatch):
    from tessera.ops.rerank import RerankOp

    def broken(self, rows):
        raise RuntimeError("CLIP weights on fire")
    monkeypatch.setattr(RerankOp, "process", broken)
    _, client = served
    code, details = await code_of(client.generate(PROMPT))
    assert code == grpc.StatusCode.INTERNAL and "'rerank'" in details


async def test_cancelled_stream_leaves_the_running_batch(tiny_model_dir, monkeypatch):
    steps = paced_sampler(monkeypatch)
    steps.allow(1)  # the first step's progress goes out; the second waits
    async with serving(app_config(tiny_model_dir)) as (server, client):
        call = client._stub.GenerateStream(
            __import__("tessera.v1.image_generation_pb2", fromlist=["x"]).GenerateRequest(
                prompt=PROMPT, num_candidates=8, seed=1))
        async for event in call:
            if event.HasField("progress") and event.progress.stage == "sample":
                break
        call.cancel()
        reg = server.engine.metrics.registry
        await until(lambda: reg.get_sample_value("tessera_requests_total", {"outcome": "cancelled"}) == 1,
                    "the server sees the cancellation")
        taken = steps.taken
        steps.free()
        sampler = server.engine.stages["sample"].workers[0].op
        await until(lambda: sampler.active == 0, "the sampler evicts the rows")
        assert steps.taken <= taken + 1  # the step under way when it left, no more


async def test_shutting_down_is_unavailable(served):
    server, client = served
    server.engine.accepting = False
    code, details = await code_of(client.generate(PROMPT))
    assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details
    server.engine.accepting = True


async def test_token_is_enforced_on_every_rpc(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TESSERA_TEST_TOKEN", "s3cret")
    config = app_config(tiny_model_dir, token_env="TESSERA_TEST_TOKEN")
    async with serving(config) as (server, anonymous):
        assert (await code_of(anonymous.generate(PROMPT)))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert (await code_of(anonymous.info()))[0] == grpc.StatusCode.UNAUTHENTICATED

        async def drain():
            async for _ in anonymous.generate_stream(PROMPT):
                pass
        assert (await code_of(drain()))[0] == grpc.StatusCode.UNAUTHENTICATED
        async with AsyncTesseraClient(f"127.0.0.1:{server.port}", token="wrong") as wrong:
            assert (await code_of(wrong.generate(PROMPT)))[0] == grpc.StatusCode.UNAUTHENTICATED
        async with AsyncTesseraClient(f"127.0.0.1:{server.port}", token="s3cret") as good:
            assert len((await good.generate(PROMPT)).images) == 1


async def test_health_and_reflection_answer(served):
    server, _ = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tessera.v1.ImageGeneration"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [r async for r in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"tessera.v1.ImageGeneration", "grpc.health.v1.Health"} <= names


async def test_metrics_are_served_over_http(served):
    server, client = served
    await client.generate(PROMPT)
    import urllib.request
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode())
    assert 'tessera_requests_total{outcome="ok"} 1.0' in body
    assert 'tessera_op_batch_rows_bucket{le="1.0",model="model",op="sample"}' in body
