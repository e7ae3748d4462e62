"""Engine errors -> gRPC status codes: the one place where that mapping lives."""
from __future__ import annotations

import grpc

from tessera.server.engine import (Cancelled, DeadlineExceeded, EngineError, InvalidInput, OpFailed,
                           Overloaded, ShuttingDown)


class InvalidRequest(InvalidInput):
    """The request message itself is out of bounds (checked before the engine sees it)."""


_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (OpFailed, grpc.StatusCode.INTERNAL),
    (EngineError, grpc.StatusCode.INTERNAL),
]


def status_for(error: BaseException) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL
