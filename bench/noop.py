"""A no-op OP, for measuring the engine's own overhead (`tessera bench --engine-only`)."""
from __future__ import annotations

from tessera.server.engine import Op


class NoopOp(Op):
    def process(self, rows: list) -> list:
        return rows
