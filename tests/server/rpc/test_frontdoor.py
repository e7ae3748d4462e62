"""The front door under hostile input: unreadable bodies, auth first, one count per call,
bounded ids, streams that leave nothing behind."""
from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.server.rpc.validation import MAX_REQUEST_ID_CHARS
from tessera.v1 import image_generation_pb2 as pb
from tests.server.engine.toy_ops import until
from tests.server.rpc.conftest import app_config, paced_sampler, serving

PROMPT = "a red circle"
GENERATE = "/tessera.v1.ImageGeneration/Generate"
STREAM = "/tessera.v1.ImageGeneration/GenerateStream"
INFO = "/tessera.v1.ImageGeneration/GetInfo"

# Bodies that are not a GenerateRequest: a length past the end, invalid UTF-8 in `prompt`
# and in `request_id`, a truncated varint, an end-group with no start, groups nested deeper
# than any parser allows.
HOSTILE = [
    b"\x0a\xff\xff\xff\x0f",
    b"\x0a\x02\xff\xfe",
    b"\x0a\x01a\x4a\x03\xc3\x28\x80",
    b"\x10\xff\xff\xff",
    b"\x0c",
    b"\x0b" * 5000,
]


def raw_call(channel: grpc.aio.Channel, method: str, *, stream: bool = False):
    """A call that sends bytes as they are (identity serializers): what a hostile client can do."""
    make = channel.unary_stream if stream else channel.unary_unary
    return make(method, request_serializer=None, response_deserializer=None)


async def status_of(call) -> grpc.StatusCode:
    try:
        result = await call if not hasattr(call, "__aiter__") else [m async for m in call]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK if result is not None else None


def requests_total(server, outcome: str) -> float:
    return server.engine.metrics.registry.get_sample_value("tessera_requests_total", {"outcome": outcome}) or 0


async def counted(server, outcome: str, n: int) -> float:
    """The count of `outcome` once it reaches n. A call is counted as its handler ends, which
    can be just after grpc has sent the status the client already holds: wait for it."""
    await until(lambda: requests_total(server, outcome) >= n, f"{n} calls counted as {outcome}")
    return requests_total(server, outcome)


@pytest.mark.parametrize("body", HOSTILE, ids=["length", "utf8-prompt", "utf8-request-id", "varint",
                                                "end-group", "deep-groups"])
async def test_unreadable_bodies_are_invalid_argument_with_one_short_line(served, body, caplog):
    server, _ = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with caplog.at_level(logging.INFO):
            assert await status_of(raw_call(channel, GENERATE)(body)) == grpc.StatusCode.INVALID_ARGUMENT
            assert await status_of(raw_call(channel, STREAM, stream=True)(body)) == grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    lines = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 2 and all(len(r.getMessage()) < 300 for r in lines)
    assert await counted(server, "invalid_input", 2) == 2


async def test_a_valid_body_sent_raw_is_served(served):
    server, _ = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        body = pb.GenerateRequest(prompt=PROMPT, seed=3).SerializeToString()
        reply = pb.GenerateResponse.FromString(await raw_call(channel, GENERATE)(body))
    assert len(reply.images) == 1


@pytest.fixture
async def authed(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TESSERA_TEST_TOKEN", "s3cret")
    async with serving(app_config(tiny_model_dir, token_env="TESSERA_TEST_TOKEN")) as (server, _):
        yield server


async def test_with_auth_on_a_body_without_a_token_is_never_parsed(authed, caplog):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{authed.port}") as channel:
        with caplog.at_level(logging.INFO):
            for body in HOSTILE:
                assert await status_of(raw_call(channel, GENERATE)(body)) == grpc.StatusCode.UNAUTHENTICATED
                assert (await status_of(raw_call(channel, STREAM, stream=True)(body))
                        == grpc.StatusCode.UNAUTHENTICATED)
    assert not [r for r in caplog.records if "undecodable" in r.getMessage() or r.levelno >= logging.ERROR]
    assert await counted(authed, "unauthenticated", 2 * len(HOSTILE)) == 2 * len(HOSTILE)


async def test_with_the_token_an_unreadable_body_is_invalid_argument(authed):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{authed.port}") as channel:
        call = raw_call(channel, GENERATE)(HOSTILE[1], metadata=(("authorization", "Bearer s3cret"),))
        assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("headers", [
    (("authorization", "Bearer wrong"), ("authorization", "Bearer s3cret")),
    (("authorization", "Bearer s3cret"), ("authorization", "Bearer s3cret")),
    (("authorization", "Bearer s3cret"), ("authorization", "Bearer wrong")),
])
async def test_two_authorization_headers_are_refused_whatever_they_hold(authed, headers):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{authed.port}") as channel:
        body = pb.GetInfoRequest().SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_call(channel, INFO)(body, metadata=headers)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "more than one" in info.value.details()


async def test_health_needs_no_token_by_default_but_can_be_made_to(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TESSERA_TEST_TOKEN", "s3cret")
    for exempt, expected in ((True, None), (False, grpc.StatusCode.UNAUTHENTICATED)):
        config = app_config(tiny_model_dir, token_env="TESSERA_TEST_TOKEN", auth_exempt_health=exempt)
        async with serving(config) as (server, _), grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
                assert expected is None and reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == expected


async def test_every_call_is_counted_once_by_its_real_outcome(tiny_model_dir, monkeypatch):
    steps = paced_sampler(monkeypatch)
    config = app_config(tiny_model_dir)
    config.server.limits.max_message_bytes = 3200  # a 64 x 64 PNG or two fit; sixteen do not
    async with serving(config) as (server, client):
        for kwargs in ({"num_images": 99}, {"top_p": 2.0}, {"prompt": ""}):
            with pytest.raises(Exception):
                await client.generate(kwargs.pop("prompt", PROMPT), **kwargs)
        # Held in the sampler. A fixed seed: its PNG's size, and so whether it fits, never varies.
        held = asyncio.create_task(client.generate(PROMPT, request_id="same", seed=1))
        await until(lambda: server.engine.requests, "the first call is admitted")
        with pytest.raises(Exception, match="already in flight"):
            await client.generate(PROMPT, request_id="same")
        steps.free()
        await held
        await client.generate(PROMPT, seed=1)
        with pytest.raises(Exception, match="max_message_bytes"):
            await client.generate(PROMPT, num_images=16, num_candidates=16, seed=2)
        await counted(server, "response_too_large", 1)
        counts = {o: requests_total(server, o) for o in ("ok", "invalid_input", "response_too_large")}
    assert counts == {"ok": 2, "invalid_input": 4, "response_too_large": 1}


async def test_request_ids_are_bounded_and_never_echoed_whole(served):
    server, client = served
    long_id = "x" * 100_000
    for _ in range(2):
        with pytest.raises(Exception) as info:
            await client.generate(PROMPT, request_id=long_id)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"limit is {MAX_REQUEST_ID_CHARS}" in info.value.details and len(info.value.details) < 200
    ok = await client.generate(PROMPT, request_id="y" * MAX_REQUEST_ID_CHARS)
    assert ok.request_id == "y" * MAX_REQUEST_ID_CHARS
    with pytest.raises(Exception) as info:
        await client.generate(PROMPT, request_id="line\nbreak")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "printable" in info.value.details


async def test_cancelled_and_expired_streams_leave_no_task_or_unretrieved_error(served, caplog):
    server, client = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub_stream = channel.unary_stream(STREAM, request_serializer=pb.GenerateRequest.SerializeToString,
                                           response_deserializer=pb.GenerateEvent.FromString)
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for i in range(6):
                call = stub_stream(pb.GenerateRequest(prompt=PROMPT, num_candidates=4, seed=i + 1,
                                                      preview_every=8),
                                   timeout=None if i % 2 else 0.05)
                try:
                    async for event in call:
                        if event.HasField("progress") and i % 2:
                            call.cancel()
                            break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
            await until(lambda: not server.engine.requests, "every stream has ended on the server")
            import gc
            gc.collect()  # a pending task or unretrieved error logs from its finalizer, here
    noisy = [r.getMessage() for r in caplog.records
             if "destroyed but it is pending" in r.getMessage() or "never retrieved" in r.getMessage()]
    assert noisy == []
    assert server.engine.metrics.registry.get_sample_value("tessera_inflight_requests", {"model": "model"}) == 0
