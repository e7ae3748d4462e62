"""The DALL·E pipeline's two ends: a request's fields -> GenerateParams, RankedImages -> a response's fields.

The front doors know no model: the graph's first OP (tokenize) maps the request's plain
fields to its input, and the output OP (rerank) maps its result to the response's fields.
TokenizeOp.from_request and RerankOp.to_response are these functions.

    params = generate_params({"prompt": "a red circle", "num_images": 2}, limits, streaming=False)
    fields = response_fields(ranked)   # {"images": [{"png": ..., "clip_score": ...}], ...}

Field names are the GenerateRequest's and GenerateResponse's (protos/tessera/v1); 0 or an
absent field asks for the default, as in proto3.
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

from tessera.ops.messages import GenerateParams, RankedImages
from tessera.server.engine import InvalidInput


class Limits(Protocol):
    """The server's `server.limits` (server/config.py, Limits) as the mapping reads them."""
    max_num_images: int
    max_num_candidates: int
    max_prompt_chars: int


def generate_params(fields: Mapping[str, Any], limits: Limits, *, streaming: bool) -> GenerateParams:
    """The request's fields as tokenize's input, or InvalidInput saying what to change."""
    prompt = fields.get("prompt") or ""
    if not prompt.strip():
        raise InvalidInput("prompt is empty; describe the image, e.g. 'a red circle'", fields=("prompt",))
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidInput(f"prompt is {len(prompt)} characters; the limit is {limits.max_prompt_chars}",
                           fields=("prompt",))
    num_images = fields.get("num_images") or 1
    num_candidates = fields.get("num_candidates") or num_images
    if num_images > limits.max_num_images:
        raise InvalidInput(f"num_images is {num_images}; the limit is {limits.max_num_images}",
                           fields=("num_images",))
    if num_candidates > limits.max_num_candidates:
        raise InvalidInput(f"num_candidates is {num_candidates}; the limit is {limits.max_num_candidates}",
                           fields=("num_candidates",))
    if num_candidates < num_images:
        raise InvalidInput(f"num_candidates ({num_candidates}) must be at least num_images ({num_images})",
                           fields=("num_candidates", "num_images"))
    temperature, top_p = fields.get("temperature") or 0.0, fields.get("top_p") or 0.0
    guidance_scale = fields.get("guidance_scale") or 0.0
    _positive("temperature", temperature, upper=100.0)
    _positive("top_p", top_p, upper=1.0)
    _positive("guidance_scale", guidance_scale, upper=100.0)
    preview_every = fields.get("preview_every") or 0
    if preview_every and not streaming:
        raise InvalidInput("preview_every applies to GenerateStream only", fields=("preview_every",))
    return GenerateParams(
        prompt=prompt,
        num_images=num_images,
        num_candidates=num_candidates,
        # 0 asks the server to choose; a non-zero seed is echoed in every image.
        seed=fields.get("seed") or (secrets.randbits(63) | 1),
        temperature=temperature or None,
        top_k=fields.get("top_k") or None,
        top_p=top_p or None,
        guidance_scale=guidance_scale or None,
        preview_every=preview_every,
    )


def response_fields(ranked: RankedImages) -> dict[str, Any]:
    """rerank's result as GenerateResponse fields (the front door adds the id and timings)."""
    return {
        "images": [{"png": im.png, "clip_score": im.clip_score, "seed": im.seed,
                    "candidate_index": im.candidate_index, "width": im.width, "height": im.height}
                   for im in ranked.images],
        "unknown_words": list(ranked.unknown_words),
        "reranked": ranked.reranked,
        "notes": list(ranked.notes),
    }


def _positive(name: str, value: float, upper: float) -> None:
    """0 means the model's default; anything else must lie in (0, upper]."""
    if value == 0:
        return
    if math.isnan(value) or not 0 < value <= upper:
        raise InvalidInput(f"{name} must be in (0, {upper:g}] (or 0 for the default), got {value:g}",
                           fields=(name,))
