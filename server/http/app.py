"""The HTTP/JSON front door: the same GenerationService as gRPC, in proto3 JSON.

    app = build_app(service, token=None, health=lambda: engine.accepting)

POST /v1/generate and /v1/generate:stream (Server-Sent Events) take a GenerateRequest as
JSON (its `model` names a served model; empty: the first); GET /v1/models lists the models
served, GET /v1/info?model=NAME answers that model's ServerInfo; with `server.admin`, POST
/v1/models/NAME:load (a ModelSection) and /v1/models/NAME:unload load, replace and unload
models; /readyz follows the models; /openapi.json describes them; / is the web page. Failures answer google.rpc.Status JSON with the HTTP status that
rpc.status derives from the gRPC code, and the message gRPC would send with the request
fields it names (InvalidInput.fields) spelled as the JSON spells them: numImages, not num_images.
"""
from __future__ import annotations

import asyncio
import json
import math
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tessera.server.engine import EngineError
from tessera.server.engine.logs import request_id as request_id_var
from tessera.server.http.openapi import openapi_document
from tessera.server.rpc.admin import ModelAdmin
from tessera.server.rpc.auth import MESSAGE as AUTH_MESSAGE
from tessera.server.rpc.auth import BearerToken
from tessera.server.rpc.service import GenerationService
from tessera.server.rpc.interceptors import CallCounter
from tessera.server.rpc.status import (AdminOff, InvalidRequest, Unauthenticated, UnsupportedMediaType,
                                       http_status_for, http_status_of, outcome_for, status_for)
from tessera.server.rpc.validation import MAX_REQUEST_ID_CHARS
from tessera.server.tracing import trace_headers
from tessera.v1 import image_generation_pb2 as pb

log = logging.getLogger("tessera.http")
ADMIN_OFF = ("the admin API is off on this server; start it with server.admin: true (tessera serve --admin) "
             "and a bearer token (server.token_file)")
STATIC = Path(__file__).resolve().parent / "static"
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def build_app(service: GenerationService, *, token: str | None, health: Callable[[], bool],
              calls: CallCounter | None = None, admin: ModelAdmin | None = None) -> Starlette:
    bearer = BearerToken(token) if token else None
    count = calls.count if calls is not None else (lambda outcome: None)
    limit = service.limits.max_message_bytes
    # The range a refusal names for a count: this server's limit, not the uint32 the wire takes.
    bounds = {"num_images": service.limits.max_num_images, "num_candidates": service.limits.max_num_candidates}

    def authorize(request: Request) -> None:
        if bearer is not None and not bearer.accepts(request.headers.get("authorization")):
            raise Unauthenticated(AUTH_MESSAGE)

    async def accept(request: Request) -> tuple[pb.GenerateRequest, str, float | None]:
        """The body as a GenerateRequest, its id and deadline; a refusal here ends the request
        (and is logged by the service, as the service logs its own)."""
        try:
            message = await _parse(request, pb.GenerateRequest, limit, bounds)
            rid = _request_id(message, request)
            return message, rid, _timeout(request)
        except InvalidRequest as exc:
            service.refused(request.headers.get("x-request-id", ""), exc)
            raise

    async def generate(request: Request) -> Response:
        rid, outcome = "", "cancelled"  # what is left if this task is cancelled: the caller went away
        try:
            authorize(request)
            message, rid, timeout_s = await accept(request)
            work = asyncio.ensure_future(service.generate(message, timeout_s=timeout_s,
                                                          trace_context=trace_headers(request.headers.items())))
            gone = asyncio.ensure_future(_disconnected(request))
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not work.done():  # the caller left: stop the work (service.generate cancels the request)
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
            if work.cancelled():
                return Response(status_code=http_status_for(grpc.StatusCode.CANCELLED))
            response = _json(work.result(), rid)
            outcome = "ok"
            return response
        except EngineError as exc:
            outcome = outcome_for(status_for(exc))
            return _error(exc, rid)
        except Exception:
            outcome = "failed"
            raise
        finally:
            count(outcome)

    async def generate_stream(request: Request) -> Response:
        rid = ""
        try:
            authorize(request)
            message, rid, timeout_s = await accept(request)
            engine_request = service.submit(message, streaming=True, timeout_s=timeout_s,
                                            trace_context=trace_headers(request.headers.items()))
        except EngineError as exc:
            count(outcome_for(status_for(exc)))
            return _error(exc, rid)
        # From here the status is 200 and sent; a later failure is an `error` event. The
        # background task also covers a caller who leaves before the first event.
        call = _StreamCall(count)

        def finish() -> None:
            engine_request.cancel()
            call.end()
        return StreamingResponse(
            _sse(service.events(engine_request), call), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **_id_header(rid)},
            background=BackgroundTask(finish))

    async def info(request: Request) -> Response:
        try:
            authorize(request)
            return _json(service.get_info(request.query_params.get("model", "")), "")
        except EngineError as exc:
            return _error(exc, "")

    async def models(request: Request) -> Response:
        try:
            authorize(request)
        except EngineError as exc:
            return _error(exc, "")
        return _json(service.list_models(), "")

    def admin_call(call: Callable[[Request, str], Awaitable[Message]]) -> Callable[[Request], Awaitable[Response]]:
        """An admin path: behind the token, 404 unless `server.admin`, the model's name from the path."""
        async def handle(request: Request) -> Response:
            try:
                authorize(request)
                if admin is None:
                    raise AdminOff(ADMIN_OFF)
                return _json(await call(request, request.path_params["name"]), "")
            except EngineError as exc:
                return _error(exc, "")
        return handle

    async def _load(request: Request, name: str) -> Message:
        section = await _parse(request, pb.ModelSection, limit)
        return await admin.load(pb.LoadModelRequest(name=name, model=section))

    load = admin_call(_load)
    unload = admin_call(lambda request, name: admin.unload(name))

    async def ready(request: Request) -> Response:
        ok = health()
        return JSONResponse({"status": "SERVING" if ok else "NOT_SERVING"}, status_code=200 if ok else 503)

    document = openapi_document(version=service.version, auth=bearer is not None, limits=service.limits,
                                admin=admin is not None)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    routes = [
        Route("/v1/generate", generate, methods=["POST"]),
        Route("/v1/generate:stream", generate_stream, methods=["POST"]),
        Route("/v1/info", info, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name}:load", load, methods=["POST"]),
        Route("/v1/models/{name}:unload", unload, methods=["POST"]),
        Route("/readyz", ready, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _routing_error})


async def _parse(request: Request, kind: type[Message], limit: int,
                 bounds: dict[str, int] | None = None) -> Message:
    """The body as `kind` in proto3 JSON, or InvalidRequest saying what is wrong with it;
    `bounds` are the largest values the server takes for some integer fields, by proto name."""
    _check_json_type(request.headers.get("content-type"))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidRequest(f"the request body is over {limit} bytes (server.limits.max_message_bytes)")
    name = kind.DESCRIPTOR.name
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"the body is not UTF-8 text; send a JSON {name}") from None
    try:
        value = json.loads(text) if text.strip() else None
    except ValueError as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc}); send a JSON {name}") from None
    except RecursionError:
        raise InvalidRequest(f"the body is not valid JSON (nested too deeply); send a JSON {name}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the body must be a JSON object (a {name}), got {_kind(value)}")
    return _message(value, kind(), bounds or {})


def _check_json_type(content_type: str | None) -> None:
    """UnsupportedMediaType unless the body is declared JSON: application/json (any charset) or
    a +json type (RFC 6839). A body with no Content-Type at all is read as JSON, as FastAPI
    reads one; curl's `-d` alone sends application/x-www-form-urlencoded and is refused."""
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    shown = media if len(media) <= 60 else media[:60] + "…"
    raise UnsupportedMediaType(f"the body is sent as {shown or 'an empty Content-Type'}; send it as JSON "
                               "with the header Content-Type: application/json")


def _message(value: dict, message: Message, bounds: dict[str, int] | None = None) -> Message:
    """Fill `message` from a JSON object by the proto3 JSON rules, or InvalidRequest naming the
    field as the JSON does (numImages) and saying what it takes, never the parser's words."""
    d = message.DESCRIPTOR
    by_name = {f.json_name: f for f in d.fields} | {f.name: f for f in d.fields}
    seen: dict[str, str] = {}
    for key, raw in value.items():
        field = by_name.get(key)
        if field is None:
            expected = ", ".join(f.json_name for f in d.fields)
            raise InvalidRequest(f"{_shown(key)} is not a field of {d.name}; the fields are {expected}")
        if field.name in seen:
            raise InvalidRequest(f"{field.json_name} is given twice (as {seen[field.name]} and {key})")
        seen[field.name] = key
        if raw is None:  # proto3 JSON: null is the default
            continue
        if field.is_repeated or field.type not in _SCALARS:  # none in GenerateRequest today
            try:
                json_format.ParseDict({field.json_name: raw}, message)
            except (json_format.ParseError, ValueError, TypeError, RecursionError):
                raise InvalidRequest(f"{field.json_name} has a value of the wrong shape; see /openapi.json") from None
            continue
        setattr(message, field.name, _scalar(field, raw, (bounds or {}).get(field.name)))
    return message


_UINT = {FieldDescriptor.TYPE_UINT32: 2**32 - 1, FieldDescriptor.TYPE_FIXED32: 2**32 - 1,
         FieldDescriptor.TYPE_UINT64: 2**64 - 1, FieldDescriptor.TYPE_FIXED64: 2**64 - 1}
_SINT = {FieldDescriptor.TYPE_INT32: 2**31 - 1, FieldDescriptor.TYPE_SINT32: 2**31 - 1,
         FieldDescriptor.TYPE_SFIXED32: 2**31 - 1, FieldDescriptor.TYPE_INT64: 2**63 - 1,
         FieldDescriptor.TYPE_SINT64: 2**63 - 1, FieldDescriptor.TYPE_SFIXED64: 2**63 - 1}
_FLOAT_MAX = {FieldDescriptor.TYPE_FLOAT: 3.4028234663852886e38, FieldDescriptor.TYPE_DOUBLE: math.inf}
_SCALARS = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BOOL, *_UINT, *_SINT, *_FLOAT_MAX}
_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _scalar(field: FieldDescriptor, raw, limit: int | None = None) -> object:
    """One JSON value as `field`'s Python value, or InvalidRequest in the JSON's words; an
    integer past its type names `limit`, the server's own bound, where it has one (a value
    within the type but past the limit is refused later, as gRPC refuses it)."""
    name, t = field.json_name, field.type
    if t == FieldDescriptor.TYPE_STRING:
        if not isinstance(raw, str):
            raise InvalidRequest(f"{name} must be a string, got {_kind(raw)}")
        return raw
    if t == FieldDescriptor.TYPE_BOOL:
        if not isinstance(raw, bool):
            raise InvalidRequest(f"{name} must be true or false, got {_kind(raw)}")
        return raw
    if t in _UINT or t in _SINT:
        low, high = (0, _UINT[t]) if t in _UINT else (-_SINT[t] - 1, _SINT[t])
        wide = high > 2**32  # 64-bit integers are strings in proto3 JSON (numbers are taken too)
        what = (f"a whole number from {low} to {high}" + (" (a number or a string of digits)" if wide else ""))
        if limit is not None:  # 0, as in proto3, asks for the default
            what = f"a whole number from {low} to {limit} (0 or absent: the default)"
        number = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            number = raw
        elif isinstance(raw, float) and raw.is_integer():
            number = int(raw)
        elif isinstance(raw, str) and re.fullmatch(r"-?[0-9]{1,20}", raw.strip()):
            number = int(raw)
        if number is None or not low <= number <= high:
            raise InvalidRequest(f"{name} must be {what}, got {_shown(raw)}")
        return number
    if t in _FLOAT_MAX:
        number = None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            try:
                number = float(raw)
            except OverflowError:  # an integer past any float
                number = math.inf
        elif isinstance(raw, str):
            number = _SPECIAL.get(raw.strip())
            if number is None:
                try:
                    number = float(raw)
                except ValueError:
                    number = None
        if number is None:
            raise InvalidRequest(f"{name} must be a number, got {_shown(raw)}")
        if math.isfinite(number) and abs(number) > _FLOAT_MAX[t]:
            raise InvalidRequest(f"{name} is too large for a float: {_shown(raw)}")
        return number


def _shown(value) -> str:
    """A caller's value in a message: JSON, cut short (never echo unbounded input)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:40] + "…"


def _kind(value) -> str:
    return {type(None): "nothing", list: "an array", dict: "an object", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _request_id(message: pb.GenerateRequest, request: Request) -> str:
    """The body's requestId, else an X-Request-Id header, else a new one: echoed either way."""
    if not message.request_id:
        message.request_id = request.headers.get("x-request-id", "") or uuid.uuid4().hex
    request_id_var.set(message.request_id)
    return message.request_id


def _timeout(request: Request) -> float | None:
    """grpc-gateway's `Grpc-Timeout` header (e.g. 30S, 500m), or None for the server's default."""
    raw = request.headers.get("grpc-timeout")
    if raw is None:
        return None
    match = re.fullmatch(r"(\d{1,8})([HMSmun])", raw.strip())
    if not match:
        raise InvalidRequest(f"Grpc-Timeout {raw!r} is not a number of 1-8 digits and a unit "
                             "(H, M, S, m, u, n), e.g. 30S or 500m")
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


async def _disconnected(request: Request) -> None:
    """Returns when the caller closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _StreamCall:
    """One stream's outcome, counted once whichever way it ends (by default: the caller left)."""

    def __init__(self, count: Callable[[str], None]):
        self.outcome, self._count, self._counted = "cancelled", count, False

    def end(self) -> None:
        if not self._counted:
            self._counted = True
            self._count(self.outcome)


async def _sse(events: AsyncIterator[pb.GenerateEvent], call: _StreamCall) -> AsyncIterator[str]:
    async with aclosing(events):
        try:
            async for event in events:
                kind = event.WhichOneof("event")
                yield f"event: {kind}\ndata: {_dumps(event)}\n\n"
            call.outcome = "ok"
        except EngineError as exc:
            code = status_for(exc)
            call.outcome = outcome_for(code)
            _log_failure(code, exc)
            yield f"event: error\ndata: {json.dumps(_status(code, exc))}\n\n"
        except Exception:
            call.outcome = "failed"
            raise
        finally:
            call.end()


def _dumps(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message), ensure_ascii=False, separators=(",", ":"))


def _id_header(rid: str) -> dict[str, str]:
    """X-Request-Id for an id a header can carry (printable ASCII); the JSON body has any id."""
    ok = rid and len(rid) <= MAX_REQUEST_ID_CHARS and rid.isascii() and rid.isprintable()
    return {"X-Request-Id": rid} if ok else {}


def _json(message: Message, rid: str) -> Response:
    headers = _id_header(rid)
    return Response(_dumps(message), media_type="application/json", headers=headers)


def _status(code: grpc.StatusCode, exc: BaseException) -> dict:
    return {"code": code.value[0], "message": _worded_for_json(exc), "details": []}


def _worded_for_json(exc: BaseException) -> str:
    """gRPC's message with each field it names (whole words only) in its proto3 JSON name, so
    an HTTP caller reads the names they send."""
    message = str(exc)
    for name in getattr(exc, "fields", ()):
        message = re.sub(rf"\b{re.escape(name)}\b", _JSON_NAMES.get(name, name), message)
    return message


# A request field's proto name -> its JSON name, as the descriptor (protoc) gives it.
_JSON_NAMES = {f.name: f.json_name for f in pb.GenerateRequest.DESCRIPTOR.fields}


def _log_failure(code: grpc.StatusCode, exc: BaseException) -> None:
    if code == grpc.StatusCode.INTERNAL:
        log.error("request failed: %s", exc)


def _error(exc: EngineError, rid: str) -> Response:
    code = status_for(exc)
    _log_failure(code, exc)
    headers = _id_header(rid)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(_status(code, exc), status_code=http_status_of(exc), headers=headers)


# grpc-gateway's answers for a path or method it does not route: its Status, its codes.
_ROUTING = {404: (grpc.StatusCode.NOT_FOUND, "no such path: {path}; the API is POST /v1/generate, "
                                             "POST /v1/generate:stream, GET /v1/info and GET /v1/models "
                                             "(see /openapi.json)"),
            405: (grpc.StatusCode.UNIMPLEMENTED, "{path} does not take {method}; it takes {allowed}")}


async def _routing_error(request: Request, exc: HTTPException) -> Response:
    """404, 405 (and any other routing refusal) as the documented JSON error, not plain text."""
    code, template = _ROUTING.get(exc.status_code, (grpc.StatusCode.INVALID_ARGUMENT, "{detail}"))
    headers = dict(exc.headers or {})
    path = request.url.path if len(request.url.path) <= 200 else request.url.path[:200] + "…"
    message = template.format(path=path, method=request.method, allowed=headers.get("Allow", "other methods"),
                              detail=exc.detail)
    return JSONResponse({"code": code.value[0], "message": message, "details": []},
                        status_code=exc.status_code, headers=headers)
