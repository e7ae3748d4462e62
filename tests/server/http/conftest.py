from __future__ import annotations

import contextlib

import httpx
import pytest

from tessera.server.app import TesseraServer
from tessera.server.config import AppConfig
from tests.server.rpc.conftest import app_config, serving  # noqa: F401 - shared with the gRPC tests


@contextlib.asynccontextmanager
async def http_serving(config: AppConfig, **headers):
    """The whole server (engine, gRPC, HTTP) on port 0, and an HTTP client pointed at it."""
    server = TesseraServer(config)
    await server.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=60, headers=headers)
    try:
        yield server, client
    finally:
        await client.aclose()
        await server.stop(2.0)


@pytest.fixture
async def http_served(tiny_model_dir):
    async with http_serving(app_config(tiny_model_dir)) as pair:
        yield pair


def sse_events(lines: list[str]) -> list[tuple[str, str]]:
    """(event, data) pairs from Server-Sent Events lines."""
    events, kind, data = [], "message", []
    for line in lines:
        if not line:
            if data:
                events.append((kind, "\n".join(data)))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return events
