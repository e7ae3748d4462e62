"""Optional bearer-token authentication: one check, used by the gRPC interceptor and HTTP."""
from __future__ import annotations

import hmac
import os
from pathlib import Path

import grpc

from tessera.server.engine import ConfigError


def load_token(token_file: str | None, token_env: str | None) -> str | None:
    """The configured token, or None when authentication is off."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError("server.token_file", f"cannot read {token_file}: {exc.strerror}") from None
        if not token:
            raise ConfigError("server.token_file", f"{token_file} is empty")
        return token
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise ConfigError("server.token_env", f"environment variable {token_env} is unset or empty")
        return token
    return None


class BearerToken:
    """Compares an `authorization` value with 'Bearer <token>' in constant time."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def accepts(self, authorization: str | bytes | None) -> bool:
        sent = authorization or b""
        if isinstance(sent, str):
            sent = sent.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(sent, self._expected)


HEALTH = "/grpc.health.v1.Health/"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks the token before anything else: a refused call's body is never parsed.

    Two `authorization` headers are refused whatever they hold (which one a proxy or a
    library reads is not ours to guess). Health checks pass without a token when
    `exempt_health` (the default: Kubernetes probes carry no credentials).
    """

    def __init__(self, token: str, exempt_health: bool = True):
        self._token = BearerToken(token)
        self._exempt_health = exempt_health

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or (self._exempt_health and details.method.startswith(HEALTH)):
            return handler
        sent = [v for k, v in (details.invocation_metadata or ()) if k == "authorization"]
        if len(sent) == 1 and self._token.accepts(sent[0]):
            return handler
        return _deny(handler, MESSAGE if len(sent) <= 1 else TWO_HEADERS)


MESSAGE = "missing or wrong bearer token (send the header 'authorization: Bearer <token>')"
TWO_HEADERS = "more than one 'authorization' header; send exactly one"


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that refuses; it takes the body as raw bytes, unparsed."""
    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kw = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(stream, **kw)
