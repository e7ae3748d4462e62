"""The ImageGeneration and ModelControl services over gRPC: the shared GenerationService and
ModelAdmin, gRPC's status codes."""
from __future__ import annotations

import logging
from contextlib import aclosing

import grpc

from tessera.server.engine import EngineError
from tessera.server.rpc.admin import ModelAdmin
from tessera.server.rpc.service import GenerationService
from tessera.server.rpc.status import status_for
from tessera.server.tracing import trace_headers
from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc

log = logging.getLogger("tessera.rpc")


class ImageGenerationServicer(pb_grpc.ImageGenerationServicer):
    def __init__(self, service: GenerationService):
        self.service = service

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        try:
            return await self.service.generate(request, timeout_s=context.time_remaining(),
                                               trace_context=trace_headers(context.invocation_metadata() or ()))
        except EngineError as exc:
            await _abort(context, exc)

    async def GenerateStream(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            # aclosing: a caller who leaves mid-stream cancels the engine request at once
            stream = self.service.generate_stream(request, timeout_s=context.time_remaining(),
                                                  trace_context=trace_headers(context.invocation_metadata() or ()))
            async with aclosing(stream) as events:
                async for event in events:
                    yield event
        except EngineError as exc:
            await _abort(context, exc)

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        try:
            return self.service.get_info(request.model)
        except EngineError as exc:
            await _abort(context, exc)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return self.service.list_models()


class ModelControlServicer(pb_grpc.ModelControlServicer):
    """Registered only with `server.admin: true`, behind the bearer token like every call."""

    def __init__(self, admin: ModelAdmin):
        self.admin = admin

    async def Load(self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatus:
        try:
            return await self.admin.load(request)
        except EngineError as exc:
            await _abort(context, exc)

    async def Unload(self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatus:
        try:
            return await self.admin.unload(request.name)
        except EngineError as exc:
            await _abort(context, exc)

    async def List(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        return self.admin.list()


async def _abort(context: grpc.aio.ServicerContext, exc: EngineError):
    code = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("request failed: %s", exc)
    await context.abort(code, str(exc))
