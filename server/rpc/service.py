"""What both front doors do, in protobuf terms and with no transport: gRPC and HTTP call this.

    service = GenerationService(engine, limits, info)
    response = await service.generate(pb.GenerateRequest(prompt="a red circle"), timeout_s=30)
    async for event in service.generate_stream(request, timeout_s=30):
        ...                                   # pb.GenerateEvent: progress..., then the result

Validation, admission, result -> GenerateResponse and Progress -> GenerateEvent live here; a
failure is an EngineError (or InvalidRequest) that the caller maps with rpc.status, the one
table of codes. Leaving the call (an exception, a cancelled task, a generator closed early)
cancels the engine request, so a caller that went away costs no more compute.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from tessera.ops.messages import RankedImages
from tessera.server.config import Limits
from tessera.server.engine import Engine, Progress, Request, Result
from tessera.server.engine.logs import request_id as request_id_var
from tessera.server.rpc.validation import check_request_id, to_payload
from tessera.v1 import image_generation_pb2 as pb

log = logging.getLogger("tessera.rpc")


class GenerationService:
    def __init__(self, engine: Engine, limits: Limits, info: dict, version: str = "0.1.0"):
        self.engine, self.limits, self.info, self.version = engine, limits, info, version

    def submit(self, request: pb.GenerateRequest, *, streaming: bool, timeout_s: float | None) -> Request:
        """Validate and admit, or raise InvalidRequest / Overloaded / ShuttingDown at once."""
        check_request_id(request.request_id)
        rid = request.request_id or uuid.uuid4().hex
        request_id_var.set(rid)
        payload = to_payload(request, self.limits, streaming=streaming)
        return self.engine.submit(payload, request_id=rid, timeout_s=timeout_s, events=streaming)

    async def generate(self, request: pb.GenerateRequest, *, timeout_s: float | None) -> pb.GenerateResponse:
        engine_request = self.submit(request, streaming=False, timeout_s=timeout_s)
        try:
            return to_response(await engine_request.result())
        finally:
            engine_request.cancel()  # no-op once finished; stops the work if the caller left

    async def generate_stream(self, request: pb.GenerateRequest, *,
                              timeout_s: float | None) -> AsyncIterator[pb.GenerateEvent]:
        engine_request = self.submit(request, streaming=True, timeout_s=timeout_s)
        async with aclosing(self.events(engine_request)) as events:
            async for event in events:
                yield event

    async def events(self, engine_request: Request) -> AsyncIterator[pb.GenerateEvent]:
        """A submitted streaming request's events; closing this early cancels the request."""
        try:
            async for event in engine_request.stream():
                yield to_event(event)
        finally:
            engine_request.cancel()

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
            details=self.info["details"])


def to_response(result: Result) -> pb.GenerateResponse:
    ranked: RankedImages = result.value  # the graph's output OP answers with RankedImages
    images = [pb.Image(png=im.png, clip_score=im.clip_score, seed=im.seed,
                       candidate_index=im.candidate_index, width=im.width, height=im.height)
              for im in ranked.images]
    timings = [pb.StageTiming(stage=t.stage, queue_ms=t.queue_ms, compute_ms=t.compute_ms)
               for t in result.timings]
    return pb.GenerateResponse(request_id=result.request_id, images=images, timings=timings,
                               total_ms=result.total_ms, unknown_words=ranked.unknown_words,
                               reranked=ranked.reranked, notes=ranked.notes)


def to_event(event: Progress | Result) -> pb.GenerateEvent:
    if isinstance(event, Progress):
        return pb.GenerateEvent(progress=pb.Progress(
            stage=event.stage, completed=event.completed, total=event.total,
            preview_png=event.preview or b""))
    return pb.GenerateEvent(result=to_response(event))
