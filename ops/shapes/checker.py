"""An independent pixel checker: reads a scene's attributes back from an image.

It looks only at pixels, never at any model, as ../shared/SHAPES.md defines "matches".
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from tessera.ops.shapes.world import COLORS, POSITIONS, SIZES, Scene

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)  # (8, 3)


def _nearest_color(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(-1)))]


def read_attributes(image: Image.Image) -> dict[str, str | None]:
    """What the pixels show: background, color, shape, size, position (None where unreadable)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)  # (64, 64, 3)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = _nearest_color(np.median(border, axis=0))
    bg_rgb = _PALETTE[_NAMES.index(background)]
    # Foreground in two passes: pixels clearly off the background give the shape's
    # colour; then a pixel is foreground when it is nearer that colour than the
    # background. Blurred or anti-aliased edges split at the midpoint; halos of a third
    # colour, far from both, drop out.
    dist_bg = np.sqrt(((pixels - bg_rgb) ** 2).sum(-1))
    coarse = dist_bg > 60.0
    out: dict[str, str | None] = {"background": background, "color": None, "shape": None,
                                  "size": None, "position": None}
    if coarse.sum() < 12:
        return out
    out["color"] = _nearest_color(np.median(pixels[coarse], axis=0))
    fg_rgb = np.median(pixels[coarse], axis=0)
    dist_fg = np.sqrt(((pixels - fg_rgb) ** 2).sum(-1))
    gap = float(np.sqrt(((fg_rgb - bg_rgb) ** 2).sum()))
    fg = (dist_fg < dist_bg) & (dist_fg < 0.75 * gap)  # off the bg-fg line: a halo, not shape
    if fg.sum() < 12:
        return out
    rows = np.where(fg.sum(1) >= 1)[0]
    cols = np.where(fg.sum(0) >= 1)[0]
    # Trim stray pixels: keep rows/cols carrying a real share of the shape.
    rows = np.where(fg.sum(1) >= 2)[0] if len(np.where(fg.sum(1) >= 2)[0]) else rows
    cols = np.where(fg.sum(0) >= 2)[0] if len(np.where(fg.sum(0) >= 2)[0]) else cols
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    h, w = y1 - y0 + 1, x1 - x0 + 1
    side = (h + w) / 2
    out["size"] = min(SIZES, key=lambda s: abs(SIZES[s] - side))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    col = min(2, max(0, int(cx // (64 / 3))))
    row = min(2, max(0, int(cy // (64 / 3))))
    out["position"] = next(name for name, cell in POSITIONS.items() if cell == (col, row))
    box = fg[y0:y1 + 1, x0:x1 + 1]
    fill = box.mean()
    widths = box.sum(1).astype(np.float32) / max(1.0, float(box.sum(1).max()))  # row profile
    quarter = max(1, len(widths) // 4)
    top, bottom = widths[:quarter].mean(), widths[-quarter:].mean()
    if fill > 0.9:
        out["shape"] = "square"
    elif bottom - top > 0.35:
        out["shape"] = "triangle"  # widening downwards
    elif (top + bottom) / 2 > 0.5:
        out["shape"] = "circle"
    else:
        out["shape"] = "diamond"  # widest in the middle
    return out


def check_image(image: Image.Image, named: dict[str, str]) -> dict[str, bool]:
    """For each attribute the prompt names, whether the image shows it."""
    seen = read_attributes(image)
    return {key: seen.get(key) == value for key, value in named.items()}


def scene_attributes(scene: Scene) -> dict[str, str]:
    return {"size": scene.size, "color": scene.color, "shape": scene.shape,
            "position": scene.position, "background": scene.background}
