"""What the front door checks itself (the request id); the model's fields are the pipeline's
to check (rpc/mapping.py, e.g. ops/requests.py for the DALL·E graph)."""
from __future__ import annotations

from tessera.server.rpc.status import InvalidRequest


# Long enough for a UUID, a trace id or a client's own scheme; short enough to log and echo.
MAX_REQUEST_ID_CHARS = 128


def check_request_id(request_id: str) -> None:
    """At most MAX_REQUEST_ID_CHARS printable characters (refused without echoing it)."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequest(f"request_id is {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}",
                             fields=("request_id",))
    if not request_id.isprintable():
        raise InvalidRequest("request_id must be printable characters (no control characters or line breaks)",
                             fields=("request_id",))

