"""Loading, replacing and unloading models at run time, in protobuf terms and with no
transport: gRPC's ModelControl and HTTP's POST /v1/models/NAME:load and :unload call this.

    admin = ModelAdmin(models)
    status = await admin.load(pb.LoadModelRequest(name="mini", model=pb.ModelSection(path="/models/mini")))
    await admin.unload("mini")

A load answers once the new version serves (or with why it cannot: the old version, if any,
serves on); an unload once the model's requests have finished and its memory is freed. Each
call is logged on `tessera.server` with what it did and how long it took.
"""
from __future__ import annotations

import logging
from typing import Any

from google.protobuf import json_format

from tessera.server.config import ServedModelConfig
from tessera.server.engine import ConfigError
from tessera.server.models import ModelSet
from tessera.server.rpc.service import model_status
from tessera.server.rpc.status import InvalidRequest
from tessera.v1 import image_generation_pb2 as pb

log = logging.getLogger("tessera.server")


class ModelAdmin:
    def __init__(self, models: ModelSet):
        self.models = models

    async def load(self, request: pb.LoadModelRequest) -> pb.ModelStatus:
        served = await self.models.load(model_entry(request))
        return model_status(served)

    async def unload(self, name: str) -> pb.ModelStatus:
        old = await self.models.unload(name)
        return model_status(old, state="unloaded")

    def list(self) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_status(m) for m in self.models])


def model_entry(request: pb.LoadModelRequest) -> ServedModelConfig:
    """The request as a `models:` entry, checked as the configuration is: InvalidRequest naming
    the field at fault (an empty string is an absent field, as in proto3)."""
    section = request.model
    raw = {"name": request.name, **{f.name: getattr(section, f.name) or None for f in section.DESCRIPTOR.fields
                                    if f.name != "ops"}}
    if section.HasField("ops"):
        raw["ops"] = _plain(json_format.MessageToDict(section.ops))
    try:
        return ServedModelConfig.from_dict({k: v for k, v in raw.items() if v is not None or k == "name"})
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None


def _plain(value: Any) -> Any:
    """A Struct's JSON as the YAML would give it: a Struct has only doubles, so a whole number
    (a batch size, a count) becomes an int again; 0.5 stays a float."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value
