"""Render scenes of the shapes world and caption them, in English and Chinese.

    >>> rng = random.Random(0)
    >>> scene = random_scene(rng)
    >>> image = render(scene, rng)          # 64 x 64 RGB PIL image
    >>> caption(scene, "en")                # "a small red circle in the top left on a blue background"
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLORS_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
             "purple": "紫色", "orange": "橙色", "white": "白色", "black": "黑色"}

SHAPES = ("circle", "square", "triangle", "diamond")
SHAPES_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "diamond": "菱形"}

SIZES: dict[str, int] = {"small": 16, "large": 30}
SIZES_ZH = {"small": "小的", "large": "大的"}

# name -> (grid column, grid row); centres at 16, 32, 48 px.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
POSITIONS_EN = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
POSITIONS_ZH = {
    "top left": "左上角", "top": "上方", "top right": "右上角", "left": "左侧",
    "center": "中间", "right": "右侧", "bottom left": "左下角", "bottom": "下方",
    "bottom right": "右下角",
}

# Colour-shape pairs never drawn in training, to measure compositional generalisation.
HELD_OUT = frozenset({("green", "triangle"), ("purple", "square"), ("orange", "circle")})

ATTRIBUTES = ("size", "color", "shape", "position", "background")


@dataclass(frozen=True)
class Scene:
    size: str
    color: str
    shape: str
    position: str
    background: str


def random_scene(rng: random.Random, *, allow_held_out: bool = False, **fixed: str) -> Scene:
    """A uniformly drawn scene; `fixed` pins attributes (e.g. color="red")."""
    while True:
        attrs = {
            "size": rng.choice(list(SIZES)),
            "color": rng.choice(list(COLORS)),
            "shape": rng.choice(SHAPES),
            "position": rng.choice(list(POSITIONS)),
            "background": rng.choice(list(COLORS)),
        }
        attrs.update(fixed)
        if attrs["color"] == attrs["background"]:
            if "color" in fixed and "background" in fixed:
                raise ValueError("shape colour and background colour must differ")
            continue
        if not allow_held_out and (attrs["color"], attrs["shape"]) in HELD_OUT:
            if "color" in fixed and "shape" in fixed:
                raise ValueError(f"{attrs['color']} {attrs['shape']} is held out of training")
            continue
        return Scene(**attrs)


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """Draw `scene` with the size and position jitter the contract allows."""
    side = SIZES[scene.size] + rng.randint(-2, 2)
    col, row = POSITIONS[scene.position]
    half = side / 2
    cx = min(max(16 + 16 * col + rng.randint(-3, 3), half), IMAGE_SIZE - half)
    cy = min(max(16 + 16 * row + rng.randint(-3, 3), half), IMAGE_SIZE - half)
    x0, y0 = round(cx - half), round(cy - half)
    x1, y1 = x0 + side - 1, y0 + side - 1
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif scene.shape == "diamond":
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        draw.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return image


def caption(scene: Scene, language: str = "en", keep: frozenset[str] | None = None) -> str:
    """The caption naming the attributes in `keep` (all by default; shape always)."""
    keep = frozenset(ATTRIBUTES) if keep is None else keep | {"shape"}
    if language == "en":
        words = ["a"]
        if "size" in keep:
            words.append(scene.size)
        if "color" in keep:
            words.append(scene.color)
        words.append(scene.shape)
        if "position" in keep:
            words.append(POSITIONS_EN[scene.position])
        if "background" in keep:
            words.append(f"on a {scene.background} background")
        return " ".join(words)
    if language == "zh":
        text = ""
        if "background" in keep:
            text += f"{COLORS_ZH[scene.background]}背景上"
        if "position" in keep:
            text += POSITIONS_ZH[scene.position]
        if text:
            text += "有一个"
        if "size" in keep:
            text += SIZES_ZH[scene.size]
        if "color" in keep:
            text += COLORS_ZH[scene.color]
        return text + SHAPES_ZH[scene.shape]
    raise ValueError(f"unknown language {language!r}; use 'en' or 'zh'")


def training_caption(scene: Scene, rng: random.Random, drop_p: float = 0.3) -> tuple[str, frozenset[str]]:
    """A caption as training sees it: attributes but shape dropped independently, EN/ZH evenly."""
    keep = frozenset(a for a in ATTRIBUTES if a == "shape" or rng.random() >= drop_p)
    return caption(scene, rng.choice(("en", "zh")), keep), keep
