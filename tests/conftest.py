from __future__ import annotations

import logging

import pytest

from tests import ports
from tests.server.engine import toy_ops


@pytest.fixture(autouse=True)
def _no_fixed_ports(request, monkeypatch):
    """Every server a test starts listens on free ports only (tests/ports.py)."""
    ports.guard(monkeypatch, allow_taken=request.node.get_closest_marker("taken_port") is not None)


@pytest.fixture(autouse=True)
def _fresh_toy_calls():
    toy_ops.CALLS.clear()
    yield
    toy_ops.release_all()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny model trained for a few steps by the real trainer: the smoke test of training."""
    from tessera.ops.training.train import train

    logging.getLogger("tessera.train").setLevel(logging.WARNING)
    root = tmp_path_factory.mktemp("tiny")
    train("tiny", root / "work", root / "model", seed=0)
    return root / "model"
