"""Optional bearer-token authentication: an interceptor that checks every RPC."""
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


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        if handler is None or hmac.compare_digest(sent.encode(), self._expected):
            return handler
        return _deny(handler)


_MESSAGE = "missing or wrong bearer token (send metadata 'authorization: Bearer <token>')"


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE)
        yield  # pragma: no cover - makes this an async generator

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(stream, **kw)
