"""Errors -> gRPC status codes, and gRPC codes -> HTTP statuses: the one place for both.

The HTTP front door derives its status from the gRPC code (as grpc-gateway does), so the
two transports can never disagree about what a failure is.
"""
from __future__ import annotations

import grpc

from tessera.server.engine import (Cancelled, DeadlineExceeded, EngineError, InvalidInput, OpFailed,
                           Overloaded, ShuttingDown)


class InvalidRequest(InvalidInput):
    """The request message itself is out of bounds (checked before the engine sees it)."""


class UnsupportedMediaType(InvalidRequest):
    """An HTTP body sent as something other than JSON (curl's default form type, text/plain).
    INVALID_ARGUMENT in the body; the HTTP status is 415, as JSON APIs answer it."""


class Unauthenticated(EngineError):
    """Auth is on and the caller's bearer token is missing or wrong (raised by a front door)."""


class ModelNotFound(EngineError):
    """A request or an admin call names a model this server does not serve."""


class ModelRefused(InvalidInput):
    """A model to load has files or a section that cannot serve (the old version, if any, serves on)."""


class ModelTooLarge(EngineError):
    """A model to load does not fit the memory left beside the models that serve."""


class AdminOff(EngineError):
    """An admin call over HTTP to a server started without `server.admin: true`: 404, as for
    a path not routed (over gRPC the ModelControl service is not registered: UNIMPLEMENTED)."""


_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (AdminOff, grpc.StatusCode.NOT_FOUND),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (OpFailed, grpc.StatusCode.INTERNAL),
    (EngineError, grpc.StatusCode.INTERNAL),
]

# grpc-gateway's table for the codes Tessera uses (499: the client closed the request).
_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


# The status a caller got -> tessera_requests_total's outcome label.
_OUTCOMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "ok",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_input",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded",
    grpc.StatusCode.CANCELLED: "cancelled",
    grpc.StatusCode.UNAVAILABLE: "shutting_down",
}


def outcome_for(code: grpc.StatusCode | None) -> str:
    """The outcome label for a call that ended with `code` (anything unexpected: failed)."""
    return _OUTCOMES.get(code, "failed")


def status_for(error: BaseException) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def http_status_for(code: grpc.StatusCode) -> int:
    return _HTTP.get(code, 500)


def http_status_of(error: BaseException) -> int:
    """The HTTP status for `error`: its gRPC code's (above), except a body that is not JSON (415)."""
    if isinstance(error, UnsupportedMediaType):
        return 415
    return http_status_for(status_for(error))
