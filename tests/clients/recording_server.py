"""A stand-in ImageGeneration server that records what each call carried: the clients' own
tests of the fields they send, and the server a client meets from before ListModels (and
before ServerInfo.shapes: its words in the deprecated top-level vocabulary alone)."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import grpc
from PIL import Image

from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(out, format="PNG")
    return out.getvalue()


# The shapes words as a server from before ServerInfo.shapes sends them: field 8 alone.
OLD_VOCABULARY = pb.Vocabulary(colors=[pb.Term(en="red", zh="红色")], shapes=[pb.Term(en="circle", zh="圆形")])


@dataclass
class Recorded:
    generate: list[pb.GenerateRequest] = field(default_factory=list)
    info: list[pb.GetInfoRequest] = field(default_factory=list)


class _Old(pb_grpc.ImageGenerationServicer):
    """Generate, GenerateStream and GetInfo as a one-model server answers them; ListModels is
    the generated base's UNIMPLEMENTED, as on a server from before it."""

    def __init__(self, recorded: Recorded):
        self.recorded = recorded

    def _response(self, request: pb.GenerateRequest) -> pb.GenerateResponse:
        self.recorded.generate.append(request)
        return pb.GenerateResponse(request_id="recorded", reranked=True, images=[
            pb.Image(png=_png(), clip_score=0.5, seed=request.seed or 1, width=4, height=4)])

    async def Generate(self, request, context):
        return self._response(request)

    async def GenerateStream(self, request, context):
        yield pb.GenerateEvent(result=self._response(request))

    async def GetInfo(self, request, context):
        self.recorded.info.append(request)
        return pb.ServerInfo(model_name="old-model", model_kind="tessera", version="3", image_width=4,
                             image_height=4, text_context=8, vocabulary=OLD_VOCABULARY)


@contextlib.asynccontextmanager
async def old_server():
    """(port, Recorded): a grpc.aio server on a free port with the servicer above."""
    recorded = Recorded()
    server = grpc.aio.server()
    pb_grpc.add_ImageGenerationServicer_to_server(_Old(recorded), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port, recorded
    finally:
        await server.stop(None)
