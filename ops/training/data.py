"""Batches of the shapes world, rendered on the fly and deterministic by (seed, stage, step)."""
from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import torch

from tessera.ops.shapes.world import (ATTRIBUTES, COLORS, POSITIONS, SHAPES, SIZES, Scene, caption,
                              random_scene, render, training_caption)

_CHOICES = {"size": list(SIZES), "color": list(COLORS), "shape": list(SHAPES),
            "position": list(POSITIONS), "background": list(COLORS)}


def batch_rng(seed: int, stage: str, step: int) -> random.Random:
    return random.Random(f"{seed}/{stage}/{step}")


def to_tensor(images) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) float in [0, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def render_batch(rng: random.Random, n: int) -> tuple[list[Scene], torch.Tensor]:
    scenes = [random_scene(rng) for _ in range(n)]
    return scenes, to_tensor([render(s, rng) for s in scenes])


def foreground(images: torch.Tensor, band_px: int = 0) -> torch.Tensor:
    """(B, 1, H, W) mask of pixels that differ from the border colour, grown by `band_px`.

    Grown, the mask also covers the background just outside the shape, so a loss weighted
    by it charges a shape that bleeds outwards as much as one that shrinks.
    """
    bg = images[:, :, :1, :1]
    mask = ((images - bg).abs().sum(1, keepdim=True) > 0.05).float()
    if band_px:
        mask = torch.nn.functional.max_pool2d(mask, 2 * band_px + 1, stride=1, padding=band_px)
    return mask


def alter(scene: Scene, attribute: str, rng: random.Random) -> Scene:
    """The same scene with one attribute changed to another value."""
    value = rng.choice([v for v in _CHOICES[attribute] if v != getattr(scene, attribute)])
    return replace(scene, **{attribute: value})


def clip_captions(scenes: list[Scene], rng: random.Random) -> tuple[list[str], list[str]]:
    """A training caption per scene and a hard negative that differs in one named attribute."""
    positives, negatives = [], []
    for scene in scenes:
        language = rng.choice(("en", "zh"))
        keep = frozenset(a for a in ATTRIBUTES if a == "shape" or rng.random() >= 0.3)
        positives.append(caption(scene, language, keep))
        negatives.append(caption(alter(scene, rng.choice(sorted(keep)), rng), language, keep))
    return positives, negatives


def corpus(seed: int, n: int) -> list[str]:
    """Captions to train the tokenizer on: every attribute subset, both languages."""
    rng = random.Random(f"{seed}/tokenizer")
    texts = []
    for _ in range(n):
        scene = random_scene(rng)
        texts.append(training_caption(scene, rng)[0])
        texts.append(caption(scene, rng.choice(("en", "zh"))))
    return texts
