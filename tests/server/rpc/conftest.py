from __future__ import annotations

import contextlib
import copy

import pytest

from tessera.clients import AsyncTesseraClient
from tessera.server.app import TesseraServer
from tessera.server.config import AppConfig
from tessera.ops.sample import SampleOp
from tessera.server.defaults import DEFAULT_CONFIG
from tests.server.engine.toy_ops import Pace, pace


def raw_config(model_dir, **server) -> dict:
    """The shipped configuration as a dict to edit, on `model_dir`, every port picked free."""
    raw = copy.deepcopy(DEFAULT_CONFIG)
    raw["model_dir"] = str(model_dir)
    raw["server"].update({"port": 0, "metrics_port": 0, "http_port": 0, **server})
    raw["graph"]["shutdown_grace_s"] = 5.0
    return raw


def app_config(model_dir, **server) -> AppConfig:
    return AppConfig.from_dict(raw_config(model_dir, **server))


@contextlib.asynccontextmanager
async def serving(config: AppConfig, **client_kw):
    server = TesseraServer(config)
    port = await server.start()
    client = AsyncTesseraClient(f"127.0.0.1:{port}", timeout=60, **client_kw)
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop(2.0)


@pytest.fixture
async def served(tiny_model_dir):
    async with serving(app_config(tiny_model_dir)) as pair:
        yield pair


def paced_sampler(monkeypatch) -> Pace:
    """The sampler takes only the steps the test allows."""
    steps, step = pace("sample"), SampleOp.step

    def paced(self):
        steps.take()
        return step(self)
    monkeypatch.setattr(SampleOp, "step", paced)
    return steps
