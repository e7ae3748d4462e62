"""The captioned shapes world (../shared/SHAPES.md): renderer, captions, pixel checker."""
from __future__ import annotations

from tessera.ops.shapes.checker import check_image, read_attributes
from tessera.ops.shapes.world import (
    COLORS,
    HELD_OUT,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption,
    random_scene,
    render,
)

__all__ = [
    "COLORS", "HELD_OUT", "POSITIONS", "SHAPES", "SIZES", "Scene",
    "caption", "random_scene", "render", "check_image", "read_attributes",
]
