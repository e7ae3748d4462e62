"""The shipped client spreads calls over several front ends with gRPC's round_robin, refuses
at once what gRPC could only fail on later, names the model a call asks for, and lists the
models of a server from before ListModels too."""
from __future__ import annotations

import asyncio

import pytest

from tessera.clients import AsyncTesseraClient, ModelStatus, TesseraClient
from tessera.clients.client import channel_target
from tests.clients.recording_server import old_server
from tests.server.rpc.conftest import app_config, serving


def finished(server) -> float:
    return server.engine.metrics.registry.get_sample_value("tessera_requests_total", {"outcome": "ok"}) or 0.0


@pytest.mark.parametrize("target, expected", [
    ("127.0.0.1:50051", "127.0.0.1:50051"),
    ("dns:///tessera.svc.cluster.local:50051", "dns:///tessera.svc.cluster.local:50051"),
    ("10.0.0.5:1,10.0.0.6:2", "ipv4:10.0.0.5:1,10.0.0.6:2"),
    ("10.0.0.5:1, localhost:2", "ipv4:10.0.0.5:1,127.0.0.1:2"),
    ("[::1]:1,[fe80::1]:2", "ipv6:[::1]:1,[fe80::1]:2"),
    ("ipv4:10.0.0.5:1,10.0.0.6:2", "ipv4:10.0.0.5:1,10.0.0.6:2"),
])
def test_a_comma_list_becomes_grpcs_multi_address_target(target, expected):
    assert channel_target(target) == expected


@pytest.mark.parametrize("target", ["10.0.0.5,10.0.0.6:2", "10.0.0.5:1,[::1]:2"])
def test_a_list_gRPC_cannot_take_is_refused_with_the_reason(target):
    with pytest.raises(ValueError, match="host:port|mixes"):
        channel_target(target)


async def test_calls_land_on_every_front_end_in_the_list(tiny_model_dir):
    async with serving(app_config(tiny_model_dir)) as (a, _), serving(app_config(tiny_model_dir)) as (b, _):
        before = [finished(a), finished(b)]
        async with AsyncTesseraClient(f"127.0.0.1:{a.port},127.0.0.1:{b.port}", timeout=60) as client:
            for sent in range(1, 41):  # a bound, not an expectation: both connect at once
                await client.generate("a red circle", num_candidates=1, seed=sent)
                if finished(a) > before[0] and finished(b) > before[1]:
                    break
        assert finished(a) > before[0] and finished(b) > before[1]
        assert finished(a) + finished(b) - sum(before) == sent

        def blocking() -> int:
            with TesseraClient(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}", timeout=60) as client:
                for sent in range(1, 41):
                    client.generate("a red circle", num_candidates=1, seed=100 + sent)
                    if finished(a) > before[0] and finished(b) > before[1]:
                        return sent
            return sent

        before = [finished(a), finished(b)]
        sent = await asyncio.to_thread(blocking)
        assert finished(a) > before[0] and finished(b) > before[1]
        assert finished(a) + finished(b) - sum(before) == sent


@pytest.mark.parametrize("token", ["…", "sécret", "two words", "tab\there", "line\n"])
async def test_a_token_grpc_metadata_cannot_carry_is_a_value_error_at_once(token):
    for make in (TesseraClient, AsyncTesseraClient):
        with pytest.raises(ValueError, match="printable ASCII without spaces"):
            make("127.0.0.1:1", token=token)


async def test_an_ascii_token_is_sent_as_a_bearer_token(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TESSERA_TEST_TOKEN", "my-secret-token")
    config = app_config(tiny_model_dir, token_env="TESSERA_TEST_TOKEN")
    async with serving(config, token="my-secret-token") as (_, client):
        assert (await client.info()).image_width == 64



async def test_a_request_carries_the_model_it_names_and_none_when_it_names_none():
    async with old_server() as (port, recorded):
        async with AsyncTesseraClient(f"127.0.0.1:{port}", timeout=10) as client:
            await client.generate("a red circle", model="mini", seed=3)
            await client.generate("a red circle")
            assert [e async for e in client.generate_stream("a red circle", model="mini")][-1].images
            await client.info(model="mini")

        def blocking() -> None:
            with TesseraClient(f"127.0.0.1:{port}", timeout=10) as sync:
                sync.generate("a red circle", model="shapes")
                list(sync.generate_stream("a red circle", model="shapes"))
                sync.info(model="shapes")
        await asyncio.to_thread(blocking)
    assert [r.model for r in recorded.generate] == ["mini", "", "mini", "shapes", "shapes"]
    assert recorded.generate[0].seed == 3
    assert [r.model for r in recorded.info] == ["mini", "shapes"]


async def test_info_of_a_server_from_before_the_family_field_keeps_its_words():
    """A server from before ServerInfo.shapes sends the shapes words in the top-level
    vocabulary alone: ServerInfo.vocabulary is read from there."""
    async with old_server() as (port, _):
        async with AsyncTesseraClient(f"127.0.0.1:{port}", timeout=10) as client:
            info = await client.info()
    assert info.vocabulary["colors"] == [("red", "红色")] and info.vocabulary["shapes"] == [("circle", "圆形")]


async def test_a_server_without_list_models_lists_its_one_model_from_get_info():
    """A server from before ListModels answers UNIMPLEMENTED: the client lists its one model,
    named "" (the name that asks for it), as GetInfo describes it."""
    async with old_server() as (port, _):
        async with AsyncTesseraClient(f"127.0.0.1:{port}", timeout=10) as client:
            listed = await client.list_models()

        def blocking() -> list[ModelStatus]:
            with TesseraClient(f"127.0.0.1:{port}", timeout=10) as sync:
                return sync.list_models()
        blocking = await asyncio.to_thread(blocking)
    assert listed == blocking == [ModelStatus("", version="3", model_kind="tessera", model_name="old-model")]
