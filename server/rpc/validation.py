"""GenerateRequest -> the engine's payload (GenerateParams), or InvalidRequest saying what to change."""
from __future__ import annotations

import math
import secrets
from typing import Any

from tessera.ops.messages import GenerateParams
from tessera.server.config import Limits
from tessera.server.rpc.status import InvalidRequest


# Long enough for a UUID, a trace id or a client's own scheme; short enough to log and echo.
MAX_REQUEST_ID_CHARS = 128


def check_request_id(request_id: str) -> None:
    """At most MAX_REQUEST_ID_CHARS printable characters (refused without echoing it)."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequest(f"request_id is {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}")
    if not request_id.isprintable():
        raise InvalidRequest("request_id must be printable characters (no control characters or line breaks)")


def to_payload(req: Any, limits: Limits, *, streaming: bool) -> GenerateParams:
    prompt = req.prompt
    if not prompt.strip():
        raise InvalidRequest("prompt is empty; describe the image, e.g. 'a red circle'")
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidRequest(f"prompt is {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
    num_images = req.num_images or 1
    num_candidates = req.num_candidates or num_images
    if num_images > limits.max_num_images:
        raise InvalidRequest(f"num_images is {num_images}; the limit is {limits.max_num_images}")
    if num_candidates > limits.max_num_candidates:
        raise InvalidRequest(f"num_candidates is {num_candidates}; the limit is {limits.max_num_candidates}")
    if num_candidates < num_images:
        raise InvalidRequest(f"num_candidates ({num_candidates}) must be at least num_images ({num_images})")
    _positive("temperature", req.temperature, upper=100.0)
    _positive("top_p", req.top_p, upper=1.0)
    _positive("guidance_scale", req.guidance_scale, upper=100.0)
    if req.preview_every and not streaming:
        raise InvalidRequest("preview_every applies to GenerateStream only")
    return GenerateParams(
        prompt=prompt,
        num_images=num_images,
        num_candidates=num_candidates,
        # 0 asks the server to choose; a non-zero seed is echoed in every image.
        seed=req.seed or (secrets.randbits(63) | 1),
        temperature=req.temperature or None,
        top_k=req.top_k or None,
        top_p=req.top_p or None,
        guidance_scale=req.guidance_scale or None,
        preview_every=req.preview_every,
    )


def _positive(name: str, value: float, upper: float) -> None:
    """0 means the model's default; anything else must lie in (0, upper]."""
    if value == 0:
        return
    if math.isnan(value) or not 0 < value <= upper:
        raise InvalidRequest(f"{name} must be in (0, {upper:g}] (or 0 for the default), got {value:g}")
