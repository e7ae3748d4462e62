"""A two-OP pipeline that paints colour gradients: "red to blue" in, PNGs out.

    request ─GradientRequest─► palette ─list[Stroke]─► paint ─Painted─► response

`palette` takes the request (its `from_request` maps the GenerateRequest's fields) and splits
it into one row per image; `paint` batches rows across requests, renders each with numpy and
merges a request's rows back into one result, which its `to_response` maps to the response's
fields. `paint.describe` is what GetInfo says the graph serves. Served by
deploy/examples/gradient.yaml; docs/pipelines.md explains each part.
"""
from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from tessera.server.engine import InvalidInput, Op

# The words the palette knows (English only: GetInfo lists them, the page shows them as chips).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (240, 140, 30), "yellow": (240, 220, 40), "green": (40, 170, 70),
    "blue": (40, 80, 220), "purple": (140, 60, 180), "white": (245, 245, 245), "black": (15, 15, 15),
}


@dataclass(frozen=True)
class GradientRequest:
    """One request as `palette` takes it: two colour names, how many images, the first seed."""
    start: str
    end: str
    num_images: int
    seed: int


@dataclass(frozen=True)
class Stroke:
    """One image to paint: from one colour to another, at an angle its seed picks."""
    start: tuple[int, int, int]
    end: tuple[int, int, int]
    seed: int
    index: int


@dataclass(frozen=True)
class PaintedImage:
    png: bytes
    seed: int
    index: int
    size: int


@dataclass(frozen=True)
class Painted:
    """A request's result: its images, in the order their rows were split."""
    images: list[PaintedImage]


class PaletteOp(Op):
    """The first OP: maps the request, then gives one Stroke row per image."""

    uses_device = False  # string work: it never waits for the device's turn

    @staticmethod
    def from_request(fields: dict[str, Any], limits: Any, *, streaming: bool) -> GradientRequest:
        """The GenerateRequest's fields (proto names) -> this OP's input; InvalidInput names the
        field and says what to change, and reaches the caller as INVALID_ARGUMENT (HTTP 400)."""
        words = re.findall(r"[a-z]+", (fields.get("prompt") or "").lower())
        named = [w for w in words if w in COLORS]
        if not named:
            raise InvalidInput(f"prompt names no colour; name one or two of {', '.join(COLORS)}, "
                               "e.g. 'red to blue'", fields=("prompt",))
        num_images = fields.get("num_images") or 1  # proto3: 0 asks for the default
        if num_images > limits.max_num_images:
            raise InvalidInput(f"num_images is {num_images}; the limit is {limits.max_num_images}",
                               fields=("num_images",))
        return GradientRequest(start=named[0], end=named[-1], num_images=num_images,
                               seed=fields.get("seed") or (secrets.randbits(63) | 1))

    def split(self, value: GradientRequest) -> list[Stroke]:
        start, end = COLORS[value.start], COLORS[value.end]
        return [Stroke(start, end, value.seed + i, i) for i in range(value.num_images)]

    def process(self, rows: list[Stroke]) -> list[Stroke]:
        return rows  # the rows are the work; a real OP would compute here

    def merge(self, value: GradientRequest, outputs: list[Stroke]) -> list[Stroke]:
        return outputs  # the request's rows, in order, for the next OP


class PaintOp(Op):
    """The output OP: renders strokes in batches, says what the graph serves, maps the response."""

    uses_device = False  # numpy on one core; a model OP would leave this True and use `device`

    @dataclass
    class Settings:  # `settings:` in the YAML, checked at start-up
        size: int = 64  # image width and height, in pixels

    config_defaults = {"batch_size": 16, "batch_timeout_ms": 1}  # what a YAML may leave out

    def setup(self, device: str) -> None:
        # Once per worker, before any row: where a model OP loads its weights onto `device`.
        size = self.settings.size
        ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        self._grid = np.stack([xs, ys])  # (2, size, size), in [0, 1]

    def split(self, value: list[Stroke]) -> list[Stroke]:
        return list(value)

    def process(self, rows: list[Stroke]) -> list[PaintedImage]:
        out = []
        for row in rows:  # rows from several requests share this call (batch_size)
            angle = np.random.default_rng(row.seed).uniform(0, 2 * np.pi)
            t = np.cos(angle) * (self._grid[0] - 0.5) + np.sin(angle) * (self._grid[1] - 0.5)
            t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)  # (size, size) in [0, 1]
            start, end = np.array(row.start, dtype=float), np.array(row.end, dtype=float)
            pixels = (start + (end - start) * t[..., None]).round().astype(np.uint8)  # (size, size, 3)
            buf = io.BytesIO()
            Image.fromarray(pixels, "RGB").save(buf, format="PNG")
            out.append(PaintedImage(buf.getvalue(), row.seed, row.index, self.settings.size))
        return out

    def merge(self, value: list[Stroke], outputs: list[PaintedImage]) -> Painted:
        return Painted(outputs)

    @staticmethod
    def to_response(value: Painted) -> dict[str, Any]:
        """This OP's result -> GenerateResponse fields (the front door adds the id and timings)."""
        return {"images": [{"png": im.png, "seed": im.seed, "candidate_index": im.index,
                            "width": im.size, "height": im.size} for im in value.images],
                "reranked": False}

    @staticmethod
    def describe(settings: PaintOp.Settings) -> dict[str, Any]:
        """What GetInfo, `tessera info`, the page and the start-up line say this graph serves."""
        return {"name": "gradient", "kind": "example", "image_width": settings.size,
                "image_height": settings.size, "tokenizer": "colour words",
                "details": {"pipeline": "palette -> paint", "colors": ", ".join(COLORS)},
                "vocabulary": {"colors": [{"en": name} for name in COLORS]}}
