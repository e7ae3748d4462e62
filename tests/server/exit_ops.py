"""OPs for `tessera serve`'s exit tests: one whose setup fails, one whose setup is still in
torch when it does (as a second worker still loads its model when the first refuses a file)."""
from __future__ import annotations

import threading

import torch

from tessera.server.engine import Op

FAILED = threading.Event()  # set once FailingSetupOp's setup has raised
STUCK_S = 30.0


class FailingSetupOp(Op):
    """Takes the request; its setup refuses, as a loader refuses a file."""

    uses_device = False

    @staticmethod
    def from_request(fields, limits, *, streaming):
        return fields.get("prompt", "")

    def setup(self, device: str) -> None:
        try:
            raise RuntimeError("this OP never starts")
        finally:
            FAILED.set()

    def process(self, rows):
        return rows


class BusySetupOp(Op):
    """The output; its setup keeps computing in torch after the other OP's setup failed."""

    uses_device = False

    @staticmethod
    def to_response(value):
        return {}

    def setup(self, device: str) -> None:
        FAILED.wait(STUCK_S)
        x = torch.ones(2**21)
        for _ in range(300):  # inside torch, the GIL released, when the failure reaches the loop
            x = torch.sin(x)

    def process(self, rows):
        return rows
