"""The OpenAPI document, derived from the protobuf messages themselves so it cannot drift.

Field names, types and the int64-as-string rule follow the proto3 JSON mapping, the same
shapes grpc-gateway's OpenAPI generator writes for these messages.
"""
from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tessera.v1 import image_generation_pb2 as pb

F = FieldDescriptor
_INT32 = {F.TYPE_INT32: (-2**31, 2**31 - 1), F.TYPE_SINT32: (-2**31, 2**31 - 1), F.TYPE_SFIXED32: (-2**31, 2**31 - 1),
          F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1)}
_INT64 = {F.TYPE_INT64: ("int64", "^-?[0-9]+$"), F.TYPE_SINT64: ("int64", "^-?[0-9]+$"),
          F.TYPE_SFIXED64: ("int64", "^-?[0-9]+$"), F.TYPE_UINT64: ("uint64", "^[0-9]+$"),
          F.TYPE_FIXED64: ("uint64", "^[0-9]+$")}

ERROR_SCHEMA = {
    "type": "object",
    "description": ("google.rpc.Status as grpc-gateway writes it: the gRPC code and "
                    "the same message, naming fields by their JSON names."),
    "properties": {"code": {"type": "integer", "description": "the gRPC status code (3 INVALID_ARGUMENT, ...)"},
                   "message": {"type": "string"},
                   "details": {"type": "array", "items": {"type": "object"}}},
    "required": ["code", "message"],
}

_ERRORS = {
    "400": "INVALID_ARGUMENT: malformed JSON, a wrong type, an unknown field, or a value out of bounds",
    "401": "UNAUTHENTICATED: auth is on and the bearer token is missing or wrong",
    "404": "NOT_FOUND: no model of that name is served (the message names those served)",
    "415": "INVALID_ARGUMENT: the body is not sent as JSON (Content-Type must be application/json)",
    "429": "RESOURCE_EXHAUSTED: the server is at capacity; retry later",
    "499": "CANCELLED: the caller went away",
    "500": "INTERNAL: a stage failed; the message names it",
    "503": "UNAVAILABLE: the server is shutting down",
    "504": "DEADLINE_EXCEEDED: the request's deadline passed",
}
_LOAD_ERRORS = {"429": "RESOURCE_EXHAUSTED: the model does not fit the memory left; the message says what fits",
                "400": "INVALID_ARGUMENT: the model section or the files cannot serve (the old version serves on)"}


def _field_schema(field: FieldDescriptor) -> dict[str, Any]:
    if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        # a map<K, V> (details, precision) is a JSON object of V by its keys, not an array of entries
        return {"type": "object", "additionalProperties": _field_schema(field.message_type.fields_by_name["value"])}
    if field.type == F.TYPE_MESSAGE and field.message_type.full_name == "google.protobuf.Struct":
        schema: dict[str, Any] = {"type": "object"}  # proto3 JSON: a Struct is any JSON object
    elif field.type == F.TYPE_MESSAGE:
        schema = {"$ref": f"#/components/schemas/{field.message_type.name}"}
    elif field.type in _INT32:
        low, high = _INT32[field.type]
        schema = {"type": "integer", "format": "int32" if low else "uint32", "minimum": low, "maximum": high}
    elif field.type in _INT64:
        fmt, pattern = _INT64[field.type]
        schema = {"type": "string", "format": fmt, "pattern": pattern}
    elif field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        schema = {"type": "number", "format": "float" if field.type == F.TYPE_FLOAT else "double"}
    elif field.type == F.TYPE_BOOL:
        schema = {"type": "boolean"}
    elif field.type == F.TYPE_BYTES:
        schema = {"type": "string", "format": "byte"}
    elif field.type == F.TYPE_ENUM:
        schema = {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    else:
        schema = {"type": "string"}
    if field.is_repeated:
        schema = {"type": "array", "items": schema}
    return schema


def message_schema(descriptor: Descriptor, *, strict: bool = False) -> dict[str, Any]:
    """A message as JSON Schema; strict (for requests): no property outside the message."""
    schema: dict[str, Any] = {"type": "object",
                              "properties": {f.json_name: _field_schema(f) for f in descriptor.fields}}
    if strict:
        schema["additionalProperties"] = False
    return schema


def _schemas() -> dict[str, Any]:
    out: dict[str, Any] = {"Status": ERROR_SCHEMA}
    pending = [pb.GenerateRequest.DESCRIPTOR, pb.GenerateEvent.DESCRIPTOR, pb.ServerInfo.DESCRIPTOR,
               pb.ListModelsResponse.DESCRIPTOR, pb.ModelSection.DESCRIPTOR]
    while pending:
        d = pending.pop()
        if d.name in out:
            continue
        out[d.name] = message_schema(d, strict=d.name in ("GenerateRequest", "ModelSection"))
        pending.extend(f.message_type for f in d.fields
                       if f.type == F.TYPE_MESSAGE and not f.message_type.full_name.startswith("google.protobuf."))
    return out


def _errors(*codes: str) -> dict[str, Any]:
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}
    return {c: {"description": _ERRORS[c], "content": body} for c in codes}


def openapi_document(*, version: str, auth: bool, limits: Any = None, admin: bool = False) -> dict[str, Any]:
    """This server's API: the admin paths only where `server.admin` turned them on."""
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    generate_errors = _errors("400", "401", "404", "415", "429", "499", "500", "503", "504")
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "the model's name, as requests give it"}]
    admin_errors = {**_errors("401", "404"),
                    **{c: {**e, "description": _LOAD_ERRORS[c]} for c, e in _errors("400", "429").items()}}
    status = {"200": {"description": "the model", "content": {"application/json": {"schema": ref("ModelStatus")}}}}
    body = {"required": True, "content": {"application/json": {"schema": ref("GenerateRequest")}}}
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "Tessera", "version": version,
                 "description": "Text to image. The JSON is the proto3 JSON mapping of tessera.v1 "
                                "(protos/tessera/v1/image_generation.proto): lowerCamelCase names, "
                                "64-bit integers as strings, bytes as base64. A `Grpc-Timeout` header "
                                "(e.g. `30S`, `500m`) sets the deadline. Every failure answers a Status "
                                "whose message names a field as the JSON does (numImages); an unknown "
                                "path is 404 (NOT_FOUND) and a method a path does not take 405 "
                                "(UNIMPLEMENTED), in the same shape."},
        "paths": {
            "/v1/generate": {"post": {
                "operationId": "Generate", "summary": "Prompt in, best images out (best first).",
                "requestBody": body,
                "responses": {"200": {"description": "the images",
                                      "content": {"application/json": {"schema": ref("GenerateResponse")}}},
                              **generate_errors}}},
            "/v1/generate:stream": {"post": {
                "operationId": "GenerateStream",
                "summary": "Server-Sent Events: `progress` events (with previews when previewEvery is set), "
                           "then one `result`; a failure after the stream began is an `error` event (Status).",
                "requestBody": body,
                "responses": {"200": {"description": "each event's data is one GenerateEvent (or Status) as JSON",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              **generate_errors}}},
            "/v1/info": {"get": {
                "operationId": "GetInfo", "summary": "A model, its vocabulary, limits and defaults.",
                "parameters": [{"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
                                "description": "which served model (GET /v1/models); absent: the first"}],
                "responses": {"200": {"description": "the server",
                                      "content": {"application/json": {"schema": ref("ServerInfo")}}},
                              **_errors("401", "404")}}},
            "/v1/models": {"get": {
                "operationId": "ListModels", "summary": "The models served, the first (what an empty `model` "
                                                        "names) first.",
                "responses": {"200": {"description": "the models",
                                      "content": {"application/json": {"schema": ref("ListModelsResponse")}}},
                              **_errors("401")}}},
            "/v1/models/{name}:load": {"post": {
                "operationId": "LoadModel",
                "summary": "Admin (server.admin): serve a model under `name`, or replace the version serving "
                           "there; answers once the new version serves. Requests in flight finish on the "
                           "old version, which is then freed; a load that fails leaves it serving.",
                "parameters": name,
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("ModelSection")}}},
                "responses": {**status, **admin_errors}}},
            "/v1/models/{name}:unload": {"post": {
                "operationId": "UnloadModel",
                "summary": "Admin (server.admin): stop serving `name`; its requests in flight finish, new ones "
                           "get 404; answers once it is freed.",
                "parameters": name, "responses": {**status, **admin_errors}}},
            "/readyz": {"get": {
                "operationId": "Ready", "summary": "200 while the engine admits requests; 503 while it drains.",
                "security": [],
                "responses": {code: {"description": text, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"status": {"type": "string",
                                                                "enum": ["SERVING", "NOT_SERVING"]}}}}}}
                              for code, text in (("200", "serving"), ("503", "draining or stopped"))}}},
        },
        "components": {"schemas": _schemas()},
    }
    if not admin:
        for path in ("/v1/models/{name}:load", "/v1/models/{name}:unload"):
            del doc["paths"][path]
    request = doc["components"]["schemas"]["GenerateRequest"]
    request["example"] = {"prompt": "a small red circle in the top left on a blue background",
                          "numImages": 1, "numCandidates": 4, "seed": "7"}
    if limits is not None:  # this server's bounds (a value past one is a 400 naming it)
        fields = request["properties"]
        fields["prompt"]["maxLength"] = limits.max_prompt_chars
        fields["numImages"]["maximum"] = limits.max_num_images
        fields["numCandidates"]["maximum"] = limits.max_num_candidates
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
