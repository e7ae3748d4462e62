"""The ImageGeneration service: protobuf in, engine request, protobuf out."""
from __future__ import annotations

import logging
import uuid

import grpc

from tessera.ops.messages import RankedImages
from tessera.server.config import Limits
from tessera.server.engine import Engine, EngineError, Progress, Result
from tessera.server.engine.logs import request_id as request_id_var
from tessera.server.rpc.status import status_for
from tessera.server.rpc.validation import to_payload
from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc

log = logging.getLogger("tessera.rpc")


class ImageGenerationServicer(pb_grpc.ImageGenerationServicer):
    def __init__(self, engine: Engine, limits: Limits, info: dict, version: str = "0.1.0"):
        self.engine, self.limits, self.info, self.version = engine, limits, info, version

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        engine_request = await self._submit(request, context, streaming=False)
        try:
            result = await engine_request.result()
        except EngineError as exc:
            await self._abort(context, exc)
        finally:
            engine_request.cancel()  # no-op once finished; stops the work if the caller left
        return _response(result)

    async def GenerateStream(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        engine_request = await self._submit(request, context, streaming=True)
        try:
            async for event in engine_request.stream():
                if isinstance(event, Progress):
                    yield pb.GenerateEvent(progress=pb.Progress(
                        stage=event.stage, completed=event.completed, total=event.total,
                        preview_png=event.preview or b""))
                else:
                    yield pb.GenerateEvent(result=_response(event))
        except EngineError as exc:
            await self._abort(context, exc)
        finally:
            engine_request.cancel()

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        s, lim = self.info.get("sampling", {}), self.limits
        return pb.ServerInfo(
            model_name=self.info["name"], image_width=self.info["image_width"],
            image_height=self.info["image_height"], text_context=self.info["text_context"],
            limits=pb.Limits(max_num_images=lim.max_num_images, max_num_candidates=lim.max_num_candidates,
                             max_message_bytes=lim.max_message_bytes, max_prompt_chars=lim.max_prompt_chars),
            defaults=pb.Defaults(temperature=s.get("temperature", 1.0), top_k=s.get("top_k", 0),
                                 top_p=s.get("top_p", 1.0), guidance_scale=s.get("guidance_scale", 1.0),
                                 num_images=1),
            version=self.version)

    async def _submit(self, request, context, *, streaming: bool):
        rid = request.request_id or uuid.uuid4().hex
        request_id_var.set(rid)
        try:
            payload = to_payload(request, self.limits, streaming=streaming)
            return self.engine.submit(payload, request_id=rid, timeout_s=context.time_remaining(),
                                      events=streaming)
        except EngineError as exc:
            await self._abort(context, exc)

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: EngineError):
        code = status_for(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("request failed: %s", exc)
        await context.abort(code, str(exc))


def _response(result: Result) -> pb.GenerateResponse:
    ranked: RankedImages = result.value  # the graph's output OP answers with RankedImages
    images = [pb.Image(png=im.png, clip_score=im.clip_score, seed=im.seed,
                       candidate_index=im.candidate_index, width=im.width, height=im.height)
              for im in ranked.images]
    timings = [pb.StageTiming(stage=t.stage, queue_ms=t.queue_ms, compute_ms=t.compute_ms)
               for t in result.timings]
    return pb.GenerateResponse(request_id=result.request_id, images=images, timings=timings,
                               total_ms=result.total_ms)


