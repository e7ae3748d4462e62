"""Which prompt words the shapes world's captions never use."""
from __future__ import annotations

import random

from tessera.ops.shapes.vocabulary import VOCABULARY, unknown_words
from tessera.ops.shapes.world import ATTRIBUTES, caption, random_scene


def test_every_training_caption_is_understood_in_both_languages():
    rng = random.Random(0)
    for _ in range(300):
        scene = random_scene(rng, allow_held_out=True)
        keep = frozenset(a for a in ATTRIBUTES if rng.random() < 0.6)
        for language in ("en", "zh"):
            assert unknown_words(caption(scene, language, keep)) == [], caption(scene, language, keep)


def test_case_punctuation_and_full_width_forms_do_not_count_as_unknown():
    assert unknown_words("A small RED Circle, in the TOP-LEFT!") == []
    assert unknown_words("蓝色背景上，左上角有一个小的红色圆形。") == []


def test_words_outside_the_world_are_reported_once_in_order():
    assert unknown_words("a photo of a cat, a cat on a red background") == ["photo", "of", "cat"]


def test_chinese_is_split_at_the_caption_phrases_and_the_rest_reported():
    assert unknown_words("蓝色背景上有一只红色的猫") == ["有一只", "的猫"]
    assert unknown_words("a red 猫") == ["猫"]


def test_vocabulary_names_every_colour_shape_size_and_position_in_both_languages():
    assert [t.en for t in VOCABULARY.colors] == ["red", "green", "blue", "yellow", "purple", "orange",
                                                 "white", "black"]
    assert {t.en: t.zh for t in VOCABULARY.shapes}["diamond"] == "菱形"
    assert {t.en: t.zh for t in VOCABULARY.sizes} == {"small": "小的", "large": "大的"}
    assert {t.en: t.zh for t in VOCABULARY.positions}["in the top left"] == "左上角"
    assert len(VOCABULARY.positions) == 9
