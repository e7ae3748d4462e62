from __future__ import annotations

import pytest

from tests.server.engine import toy_ops


@pytest.fixture(autouse=True)
def _fresh_toy_calls():
    toy_ops.CALLS.clear()
    yield
