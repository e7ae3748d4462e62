"""The gRPC front door's outermost layer: bodies that cannot be read, and one count per call.

    server = grpc.aio.server(interceptors=[FrontDoorInterceptor(counter, max_message_bytes),
                                           BearerTokenInterceptor(token)])

It wraps every ImageGeneration method's handler (after auth has chosen it, so a refused
call's body is never parsed: its handler reads raw bytes):

- the request deserializer turns bytes that are not the method's message (bad lengths,
  invalid UTF-8 in a string field, deep nesting) into INVALID_ARGUMENT and one short
  warning, where grpc would log a traceback and answer UNKNOWN;
- a response over max_message_bytes is refused as RESOURCE_EXHAUSTED with a message
  that says what to change, where grpc would fail it after the handler counted it done;
- an unexpected exception is INTERNAL with one log line, never UNKNOWN;
- Generate and GenerateStream calls are counted once each, when they end, by the status
  their caller got (tessera_requests_total{outcome}), whichever way they end.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter

from tessera.server.rpc.status import outcome_for

log = logging.getLogger("tessera.rpc")

SERVICE = "/tessera.v1.ImageGeneration/"
COUNTED = {SERVICE + "Generate", SERVICE + "GenerateStream"}


class CallCounter:
    """tessera_requests_total{outcome}: every generation call, counted once when it ends."""

    def __init__(self, registry: CollectorRegistry):
        self.calls = Counter("tessera_requests", "Generation calls by how they ended (the status the caller got).",
                             ["outcome"], registry=registry)

    def count(self, outcome: str) -> None:
        self.calls.labels(outcome).inc()


class Undecodable:
    """What the deserializer hands on instead of raising: the handler then refuses the call."""

    def __init__(self, message_type: str, error: Exception):
        self.message_type, self.error = message_type, error


class FrontDoorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, counter: CallCounter, max_message_bytes: int):
        self.counter, self.limit = counter, max_message_bytes
        self.last_call = time.monotonic()  # when the latest call arrived (shutdown waits for a lull)

    async def intercept_service(self, continuation, details):
        self.last_call = time.monotonic()
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE):
            return handler
        counted = details.method in COUNTED
        deserialize = _guarded(handler.request_deserializer, details.method)
        kw = {"request_deserializer": deserialize, "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, counted), **kw)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._stream(handler.unary_stream, counted), **kw)
        return handler  # the service has no client-streaming methods

    def _unary(self, behaviour, counted: bool):
        async def call(request: Any, context: grpc.aio.ServicerContext):
            async with self._answering(context, counted) as outcome:
                _refuse_undecodable(request)
                response = await behaviour(request, context)
                self._check_size(response)
                outcome.value = "ok"
                return response
        return call

    def _stream(self, behaviour, counted: bool):
        async def call(request: Any, context: grpc.aio.ServicerContext):
            async with self._answering(context, counted) as outcome:
                _refuse_undecodable(request)
                async for event in behaviour(request, context):
                    self._check_size(event)
                    yield event
                outcome.value = "ok"
        return call

    @contextlib.asynccontextmanager
    async def _answering(self, context: grpc.aio.ServicerContext, counted: bool):
        """How a call ends, for unary and streaming calls alike: a refusal or a bug becomes its
        status, and the call is counted once by the status its caller got."""
        outcome = _Outcome()
        try:
            yield outcome
        except _Refusal as refusal:
            outcome.value = refusal.outcome
            await context.abort(refusal.code, refusal.message)
        except _ABORTED:
            outcome.value = outcome_for(context.code())
            raise
        except asyncio.CancelledError:
            outcome.value = _gone(context)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug is INTERNAL, never UNKNOWN
            outcome.value = _gone(context) if _ended(context) else "failed"
            await _answer_unexpected(context, exc)
        finally:
            if counted:
                self.counter.count(outcome.value)

    def _check_size(self, message: Any) -> None:
        size = message.ByteSize() if hasattr(message, "ByteSize") else 0
        if size > self.limit:
            raise _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "response_too_large",
                           f"the response is {size} bytes, over the server's max_message_bytes ({self.limit}); "
                           "ask for fewer images or previews")


# context.abort raises this once it has set the status (grpc.aio's AbortError).
_ABORTED = (grpc.aio.AbortError,)


class _Outcome:
    value = "cancelled"  # what is left if the task is cancelled or the stream closed: the caller went away


class _Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, outcome: str, message: str):
        super().__init__(message)
        self.code, self.outcome, self.message = code, outcome, message


def _gone(context: grpc.aio.ServicerContext) -> str:
    """What a caller who left got: its own deadline, or its cancellation."""
    remaining = context.time_remaining()
    return "deadline_exceeded" if remaining is not None and remaining <= 0 else "cancelled"


def _ended(context: grpc.aio.ServicerContext) -> bool:
    return context.cancelled() or context.done()


async def _answer_unexpected(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if _ended(context):
        # The call ended under the handler (the caller's deadline or cancellation, as the
        # handler tried to answer): nobody is left to tell, and nothing went wrong here.
        raise asyncio.CancelledError() from exc
    log.error("unexpected error: %r", exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server logged it")


def _refuse_undecodable(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, "invalid_input",
                       f"the request body is not a valid {request.message_type}: {request.error}")


def _guarded(deserialize, method: str):
    """The handler's deserializer, returning Undecodable where it would raise."""
    if deserialize is None:  # raw bytes (a refusing handler): nothing to parse
        return None
    message_type = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    name = message_type.full_name if message_type is not None else "request message"

    def guarded(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
            # One short line: a client's bad bytes are its mistake, not the server's.
            log.warning("undecodable %s body (%d bytes) on %s: %s", name, len(data), method,
                        _short(exc))
            return Undecodable(name, _short(exc))
    return guarded


def _short(exc: Exception, limit: int = 120) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"
