"""The shapes world follows its contract, and the checker reads it back from pixels."""
from __future__ import annotations

import random

import pytest

from tessera.ops.shapes import HELD_OUT, caption, random_scene, read_attributes, render
from tessera.ops.shapes.checker import scene_attributes
from tessera.ops.shapes.world import Scene


def test_checker_reads_every_attribute_of_rendered_scenes():
    rng = random.Random(3)
    for _ in range(400):
        scene = random_scene(rng, allow_held_out=True)
        assert read_attributes(render(scene, rng)) == scene_attributes(scene)


def test_training_scenes_never_draw_held_out_pairs_or_same_colours():
    rng = random.Random(4)
    for _ in range(3000):
        s = random_scene(rng)
        assert (s.color, s.shape) not in HELD_OUT and s.color != s.background
    with pytest.raises(ValueError, match="held out"):
        random_scene(rng, color="green", shape="triangle")


def test_captions_follow_the_contract_in_both_languages():
    s = Scene("small", "red", "circle", "top left", "blue")
    assert caption(s, "en") == "a small red circle in the top left on a blue background"
    assert caption(s, "zh") == "蓝色背景上左上角有一个小的红色圆形"
    assert caption(s, "en", frozenset({"color"})) == "a red circle"
    assert caption(s, "zh", frozenset({"color"})) == "红色圆形"


def test_rendering_is_deterministic_by_seed():
    a = render(Scene("large", "green", "diamond", "center", "black"), random.Random(9))
    b = render(Scene("large", "green", "diamond", "center", "black"), random.Random(9))
    assert a.tobytes() == b.tobytes()
