"""What both front doors do, in protobuf terms and with no transport: gRPC and HTTP call this.

    service = GenerationService(models, limits)          # models: server/models.py's ModelSet
    response = await service.generate(pb.GenerateRequest(prompt="a red circle", model="mini"), timeout_s=30)
    async for event in service.generate_stream(request, timeout_s=30):
        ...                                   # pb.GenerateEvent: progress..., then the result

Validation, admission, result -> GenerateResponse and Progress -> GenerateEvent live here; the
request's `model` picks the served model whose engine admits it (empty: the first), and that
model's part of each (request fields -> the first OP's input, the output OP's result ->
response fields) is its pipeline's own (rpc/mapping.py). A failure is an EngineError (or
InvalidRequest) that the caller maps with rpc.status, the one table of codes. Leaving the call
(an exception, a cancelled task, a generator closed early) cancels the engine request, so a
caller that went away costs no more compute.

Every request that reaches the service ends in one INFO line on `tessera.rpc`, whichever door
it came in by: `request <id> ok in 812.4 ms, 2 images, model mini` or
`request <id> INVALID_ARGUMENT in 0.1 ms, 0 images, model mini`.
"""
from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from tessera.server.config import Limits
from tessera.server.engine import EngineError, Progress, Request, Result
from tessera.server.engine.logs import request_id as request_id_var
from tessera.server.rpc.status import status_for
from tessera.server.rpc.validation import MAX_REQUEST_ID_CHARS, check_request_id
from tessera.v1 import image_generation_pb2 as pb

if TYPE_CHECKING:
    from tessera.server.models import ModelSet, ServedModel
    from tessera.server.rpc.mapping import PipelineMapping

log = logging.getLogger("tessera.rpc")


class GenerationService:
    def __init__(self, models: ModelSet, limits: Limits, version: str = "0.1.0"):
        self.models, self.limits, self.version = models, limits, version
        self._calls: weakref.WeakKeyDictionary[Request, _Call] = weakref.WeakKeyDictionary()

    @property
    def info(self) -> dict:
        """What the first model's GetInfo says (the start-up line's model)."""
        return self.models.get("").info

    def submit(self, request: pb.GenerateRequest, *, streaming: bool, timeout_s: float | None,
               trace_context: dict[str, str] | None = None) -> Request:
        """Validate and admit, or raise InvalidRequest / ModelNotFound / Overloaded / ShuttingDown at once;
        `trace_context`: the caller's W3C traceparent/tracestate (the parent of its spans)."""
        call = _Call(request.request_id, request.model)
        try:
            check_request_id(request.request_id)
            call.rid = request.request_id or uuid.uuid4().hex
            request_id_var.set(call.rid)
            served = self.models.get(request.model)
            call.model, call.mapping = served.name, served.mapping
            payload = served.mapping.from_request(request_fields(request), self.limits, streaming=streaming)
            # No await from get() to here: the engine that admits it is the one that serves the name now.
            engine_request = served.engine.submit(payload, request_id=call.rid, timeout_s=timeout_s,
                                                  events=streaming, priority=request.priority,
                                                  trace_context=trace_context)
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
        _Call(request_id, "").end(status_for(error).name)

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

    def to_response(self, result: Result, call: _Call) -> pb.GenerateResponse:
        """The engine's result as a GenerateResponse: the output OP's fields, the id and timings."""
        try:
            fields = call.mapping.to_response(result.value)
            timings = [pb.StageTiming(stage=t.stage, queue_ms=t.queue_ms, compute_ms=t.compute_ms)
                       for t in result.timings]
            return pb.GenerateResponse(request_id=result.request_id, timings=timings, total_ms=result.total_ms,
                                       **fields)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise EngineError(f"the pipeline's output does not fit a GenerateResponse: {exc}") from exc

    def _response(self, engine_request: Request, result: Result) -> pb.GenerateResponse:
        """The response the end's log line counted (built once), else a new one."""
        call = self._calls[engine_request]
        if call.response is not None:
            return call.response
        return self.to_response(result, call)

    def _ended(self, call: _Call, future) -> None:
        if future.cancelled():
            call.end("CANCELLED")
        elif future.exception() is not None:
            call.end(status_for(future.exception()).name)
        else:
            try:
                call.response = self.to_response(future.result(), call)
            except EngineError as exc:  # the caller hears it when it reads the result
                call.end(status_for(exc).name)
                return
            call.end("ok", images=len(call.response.images))

    def get_info(self, model: str = "") -> pb.ServerInfo:
        """GetInfo of the model `model` names ("" the first); ModelNotFound otherwise."""
        info = self.models.get(model).info
        s, lim = info.get("sampling", {}), self.limits
        shapes = info.get("shapes") or {}  # the shapes family's own fields (ShapesFamily)
        family = {"shapes": pb.ShapesFamily(vocabulary=vocabulary(shapes.get("vocabulary", {})))} if shapes else {}
        # The deprecated top-level vocabulary: a pipeline's own word list, else the family's
        # words again, so that a client from before `shapes` still shows them.
        words = info["vocabulary"] if any(info["vocabulary"].values()) else shapes.get("vocabulary", {})
        return pb.ServerInfo(
            model_name=info["name"], image_width=info["image_width"],
            image_height=info["image_height"], text_context=info["text_context"],
            limits=pb.Limits(max_num_images=lim.max_num_images, max_num_candidates=lim.max_num_candidates,
                             max_message_bytes=lim.max_message_bytes, max_prompt_chars=lim.max_prompt_chars),
            defaults=pb.Defaults(temperature=s.get("temperature", 1.0), top_k=s.get("top_k", 0),
                                 top_p=s.get("top_p", 1.0), guidance_scale=s.get("guidance_scale", 1.0),
                                 num_images=1),
            version=self.version,
            vocabulary=vocabulary(words),
            model_kind=info["kind"], image_tokens=info["image_tokens"],
            tokenizer=info["tokenizer"], rerank=info["rerank"], reranker=info["reranker"],
            details=info["details"], precision=info.get("precision", {}), **family)

    def list_models(self) -> pb.ListModelsResponse:
        """The models served, the first (what an empty `model` names) first."""
        return pb.ListModelsResponse(models=[model_status(m) for m in self.models])


def vocabulary(words: dict[str, list[dict[str, str]]]) -> pb.Vocabulary:
    """{"colors": [{"en": "red", "zh": "红色"}, ...], ...} -> a Vocabulary message."""
    return pb.Vocabulary(**{kind: [pb.Term(**t) for t in terms] for kind, terms in words.items()})


def model_status(served: ServedModel, state: str = "serving") -> pb.ModelStatus:
    return pb.ModelStatus(name=served.name, version=served.version, model_kind=served.info["kind"],
                          model_name=served.info["name"], state=state, load_ms=served.load_ms)


def request_fields(request: pb.GenerateRequest) -> dict[str, Any]:
    """The request as plain fields, named as in the proto (the id, the model's name and the
    priority are the service's and the engine's, not the model's)."""
    return {f.name: getattr(request, f.name) for f in request.DESCRIPTOR.fields
            if f.name not in ("request_id", "model", "priority")}


def to_event(event: Progress) -> pb.GenerateEvent:
    return pb.GenerateEvent(progress=pb.Progress(
        stage=event.stage, completed=event.completed, total=event.total,
        preview_png=event.preview or b""))


class _Call:
    """One request's end, logged once: its id, outcome (ok or the status code), duration, images,
    and the model it named (the served model's name once one admitted it)."""

    def __init__(self, request_id: str, model: str):
        self.rid, self.started = request_id, time.monotonic()
        self.model = model
        self.mapping: PipelineMapping | None = None
        self.response: pb.GenerateResponse | None = None
        self._logged = False

    def end(self, outcome: str, images: int = 0) -> None:
        if self._logged:
            return
        self._logged = True
        ms = 1000 * (time.monotonic() - self.started)
        rid = self.rid if self.rid.isprintable() and len(self.rid) <= MAX_REQUEST_ID_CHARS else "(invalid id)"
        model = self.model if self.model.isprintable() and len(self.model) <= 64 else "(invalid name)"
        log.info("request %s %s in %.1f ms, %d images, model %s", rid, outcome, ms, images, model or "(first)",
                 extra={"request_id": rid, "outcome": outcome, "duration_ms": ms, "images": images,
                        "model": model})

