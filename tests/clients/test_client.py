"""The Python client refuses what gRPC could only fail on later."""
from __future__ import annotations

import pytest

from tessera.clients import AsyncTesseraClient, TesseraClient


@pytest.mark.parametrize("token", ["…", "sécret", "two words", "tab\there", "line\n"])
async def test_a_token_grpc_metadata_cannot_carry_is_a_value_error_at_once(token):
    for make in (TesseraClient, AsyncTesseraClient):
        with pytest.raises(ValueError, match="printable ASCII without spaces"):
            make("127.0.0.1:1", token=token)


async def test_an_ascii_token_is_sent_as_a_bearer_token(tiny_model_dir, monkeypatch):
    from tests.server.rpc.conftest import app_config, serving
    monkeypatch.setenv("TESSERA_TEST_TOKEN", "my-secret-token")
    config = app_config(tiny_model_dir, token_env="TESSERA_TEST_TOKEN")
    async with serving(config, token="my-secret-token") as (_, client):
        assert (await client.info()).image_width == 64
