"""What the front door checks itself (the request id); the model's fields are the pipeline's
to check (rpc/mapping.py, e.g. ops/requests.py for the DALL·E graph)."""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from tessera.server.config import Limits
from tessera.server.engine import GraphConfig, InvalidInput
from tessera.server.rpc.status import InvalidRequest


# Long enough for a UUID, a trace id or a client's own scheme; short enough to log and echo.
MAX_REQUEST_ID_CHARS = 128


def check_request_id(request_id: str) -> None:
    """At most MAX_REQUEST_ID_CHARS printable characters (refused without echoing it)."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequest(f"request_id is {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}")
    if not request_id.isprintable():
        raise InvalidRequest("request_id must be printable characters (no control characters or line breaks)")


def to_payload(req: Any, limits: Limits, *, streaming: bool) -> Any:
    """A request (a GenerateRequest, a mapping of its fields, or an object with them as
    attributes) as the shipped graph's first message, or InvalidRequest saying what to change.

    For callers with no server (the bench's generic baseline); a server maps requests with
    the graph it serves (GenerationService.mapping)."""
    if isinstance(req, Mapping):
        fields = dict(req)
    elif hasattr(req, "DESCRIPTOR"):
        fields = {f.name: getattr(req, f.name) for f in req.DESCRIPTOR.fields}
    else:
        fields = dict(req) if hasattr(req, "__iter__") else dict(vars(req))
    fields.pop("request_id", None)
    try:
        return _shipped_mapping().from_request(fields, limits, streaming=streaming)
    except InvalidInput as exc:
        raise InvalidRequest(str(exc)) from None


@functools.cache
def _shipped_mapping():
    from tessera.server.defaults import DEFAULT_CONFIG  # a server's own graph never comes through here
    from tessera.server.rpc.mapping import PipelineMapping
    return PipelineMapping.of(GraphConfig.from_dict(DEFAULT_CONFIG["graph"]))
