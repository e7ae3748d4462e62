"""What both front doors do, in protobuf terms and with no transport: gRPC and HTTP call this.

    service = GenerationService(engine, limits, info, mapping=PipelineMapping.of(config.graph))
    response = await service.generate(pb.GenerateRequest(prompt="a red circle"), timeout_s=30)
    async for event in service.generate_stream(request, timeout_s=30):
        ...                                   # pb.GenerateEvent: progress..., then the result

Validation, admission, result -> GenerateResponse and Progress -> GenerateEvent live here; the
model's part of each (request fields -> the first OP's input, the output OP's result ->
response fields) is the pipeline's own (rpc/mapping.py). A failure is an EngineError (or
InvalidRequest) that the caller maps with rpc.status, the one table of codes. Leaving the call
(an exception, a cancelled task, a generator closed early) cancels the engine request, so a
caller that went away costs no more compute.

Every request that reaches the service ends in one INFO line on `tessera.rpc`, whichever door
it came in by: `request <id> ok in 812.4 ms, 2 images` or `request <id> INVALID_ARGUMENT in 0.1 ms`.
"""
from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from tessera.server.config import Limits
from tessera.server.engine import Engine, EngineError, Progress, Request, Result
from tessera.server.engine.logs import request_id as request_id_var
from tessera.server.rpc.mapping import PipelineMapping
from tessera.server.rpc.status import status_for
from tessera.server.rpc.validation import MAX_REQUEST_ID_CHARS, check_request_id
from tessera.v1 import image_generation_pb2 as pb

log = logging.getLogger("tessera.rpc")


class GenerationService:
    def __init__(self, engine: Engine, limits: Limits, info: dict, version: str = "0.1.0", *,
                 mapping: PipelineMapping):
        self.engine, self.limits, self.info, self.version = engine, limits, info, version
        self.mapping = mapping
        self._calls: weakref.WeakKeyDictionary[Request, _Call] = weakref.WeakKeyDictionary()

    def submit(self, request: pb.GenerateRequest, *, streaming: bool, timeout_s: float | None,
               trace_context: dict[str, str] | None = None) -> Request:
        """Validate and admit, or raise InvalidRequest / Overloaded / ShuttingDown at once;
        `trace_context`: the caller's W3C traceparent/tracestate (the parent of its spans)."""
        call = _Call(request.request_id)
        try:
            check_request_id(request.request_id)
            call.rid = request.request_id or uuid.uuid4().hex
            request_id_var.set(call.rid)
            payload = self.mapping.from_request(request_fields(request), self.limits, streaming=streaming)
            engine_request = self.engine.submit(payload, request_id=call.rid, timeout_s=timeout_s, events=streaming,
                                                priority=request.priority, trace_context=trace_context)
        except EngineError as exc:
            call.end(status_for(exc).name)
            raise
        self._calls[engine_request] = call
        # However the caller reads (or stops reading) it, the request's end is logged once.
        engine_request.future.add_done_callback(lambda future: self._ended(call, future))
        return engine_request

    def refused(self, request_id: str, error: EngineError) -> None:
        """Log the end of a request a front door refused before it reached `submit` (a body
        that is not a GenerateRequest), as `submit` logs its own refusals."""
        _Call(request_id).end(status_for(error).name)

    async def generate(self, request: pb.GenerateRequest, *, timeout_s: float | None,
                       trace_context: dict[str, str] | None = None) -> pb.GenerateResponse:
        engine_request = self.submit(request, streaming=False, timeout_s=timeout_s, trace_context=trace_context)
        try:
            return self._response(engine_request, await engine_request.result())
        finally:
            engine_request.cancel()  # no-op once finished; stops the work if the caller left

    async def generate_stream(self, request: pb.GenerateRequest, *, timeout_s: float | None,
                              trace_context: dict[str, str] | None = None) -> AsyncIterator[pb.GenerateEvent]:
        engine_request = self.submit(request, streaming=True, timeout_s=timeout_s, trace_context=trace_context)
        async with aclosing(self.events(engine_request)) as events:
            async for event in events:
                yield event

    async def events(self, engine_request: Request) -> AsyncIterator[pb.GenerateEvent]:
        """A submitted streaming request's events; closing this early cancels the request."""
        try:
            async for event in engine_request.stream():
                if isinstance(event, Progress):
                    yield to_event(event)
                else:
                    yield pb.GenerateEvent(result=self._response(engine_request, event))
        finally:
            engine_request.cancel()

    def to_response(self, result: Result) -> pb.GenerateResponse:
        """The engine's result as a GenerateResponse: the output OP's fields, the id and timings."""
        try:
            fields = self.mapping.to_response(result.value)
            timings = [pb.StageTiming(stage=t.stage, queue_ms=t.queue_ms, compute_ms=t.compute_ms)
                       for t in result.timings]
            return pb.GenerateResponse(request_id=result.request_id, timings=timings, total_ms=result.total_ms,
                                       **fields)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise EngineError(f"the pipeline's output does not fit a GenerateResponse: {exc}") from exc

    def _response(self, engine_request: Request, result: Result) -> pb.GenerateResponse:
        """The response the end's log line counted (built once), else a new one."""
        call = self._calls.get(engine_request)
        if call is not None and call.response is not None:
            return call.response
        return self.to_response(result)

    def _ended(self, call: _Call, future) -> None:
        if future.cancelled():
            call.end("CANCELLED")
        elif future.exception() is not None:
            call.end(status_for(future.exception()).name)
        else:
            try:
                call.response = self.to_response(future.result())
            except EngineError as exc:  # the caller hears it when it reads the result
                call.end(status_for(exc).name)
                return
            call.end("ok", images=len(call.response.images))

    def get_info(self) -> pb.ServerInfo:
        s, lim = self.info.get("sampling", {}), self.limits
        return pb.ServerInfo(
            model_name=self.info["name"], image_width=self.info["image_width"],
            image_height=self.info["image_height"], text_context=self.info["text_context"],
            limits=pb.Limits(max_num_images=lim.max_num_images, max_num_candidates=lim.max_num_candidates,
                             max_message_bytes=lim.max_message_bytes, max_prompt_chars=lim.max_prompt_chars),
            defaults=pb.Defaults(temperature=s.get("temperature", 1.0), top_k=s.get("top_k", 0),
                                 top_p=s.get("top_p", 1.0), guidance_scale=s.get("guidance_scale", 1.0),
                                 num_images=1),
            version=self.version,
            vocabulary=pb.Vocabulary(**{kind: [pb.Term(**t) for t in terms]
                                        for kind, terms in self.info["vocabulary"].items()}),
            model_kind=self.info["kind"], image_tokens=self.info["image_tokens"],
            tokenizer=self.info["tokenizer"], rerank=self.info["rerank"], reranker=self.info["reranker"],
            details=self.info["details"], precision=self.info.get("precision", {}))


def request_fields(request: pb.GenerateRequest) -> dict[str, Any]:
    """The request as plain fields, named as in the proto (the id and priority are the
    service's and the engine's, not the model's)."""
    return {f.name: getattr(request, f.name) for f in request.DESCRIPTOR.fields
            if f.name not in _NOT_THE_MODELS}


_NOT_THE_MODELS = {"request_id", "priority"}


def to_event(event: Progress) -> pb.GenerateEvent:
    return pb.GenerateEvent(progress=pb.Progress(
        stage=event.stage, completed=event.completed, total=event.total,
        preview_png=event.preview or b""))


class _Call:
    """One request's end, logged once: its id, outcome (ok or the status code), duration, images."""

    def __init__(self, request_id: str):
        self.rid, self.started = request_id, time.monotonic()
        self.response: pb.GenerateResponse | None = None
        self._logged = False

    def end(self, outcome: str, images: int = 0) -> None:
        if self._logged:
            return
        self._logged = True
        ms = 1000 * (time.monotonic() - self.started)
        rid = self.rid if self.rid.isprintable() and len(self.rid) <= MAX_REQUEST_ID_CHARS else "(invalid id)"
        log.info("request %s %s in %.1f ms, %d images", rid, outcome, ms, images,
                 extra={"request_id": rid, "outcome": outcome, "duration_ms": ms, "images": images})

