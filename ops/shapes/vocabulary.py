"""The words the shapes world's captions use, and which words of a prompt fall outside them.

A model trained on these captions (the bundled one) knows exactly these words; anything
else ("cat", "photo", "一只") it never saw, so its images cannot follow it.

    >>> unknown_words("a photo of a red cat")
    ['photo', 'of', 'cat']
    >>> unknown_words("蓝色背景上有一只红色的猫")
    ['有一只', '的猫']
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from tessera.ops.families.tessera.tokenizer import normalize_prompt
from tessera.ops.shapes.world import (COLORS, COLORS_ZH, POSITIONS, POSITIONS_EN, POSITIONS_ZH, SHAPES,
                                      SHAPES_ZH, SIZES, SIZES_ZH, Scene, caption)

_CJK = re.compile(r"[\u3400-\u9fff]+")


@dataclass(frozen=True)
class Term:
    """One thing the model can draw, as English and Chinese captions name it."""
    en: str
    zh: str


@dataclass(frozen=True)
class Vocabulary:
    colors: tuple[Term, ...]
    shapes: tuple[Term, ...]
    sizes: tuple[Term, ...]
    positions: tuple[Term, ...]


VOCABULARY = Vocabulary(
    colors=tuple(Term(c, COLORS_ZH[c]) for c in COLORS),
    shapes=tuple(Term(s, SHAPES_ZH[s]) for s in SHAPES),
    sizes=tuple(Term(s, SIZES_ZH[s]) for s in SIZES),
    positions=tuple(Term(POSITIONS_EN[p], POSITIONS_ZH[p]) for p in POSITIONS),
)


def _caption_words() -> tuple[frozenset[str], tuple[str, ...]]:
    """Every English word and every Chinese phrase of the full captions (longest first)."""
    en: set[str] = set()
    zh: set[str] = set()
    for position in POSITIONS:
        scene = Scene("small", "red", "circle", position, "blue")
        en.update(caption(scene, "en").split())
        # The Chinese caption's glue between attributes: 背景上 and 有一个.
        text = caption(scene, "zh")
        for phrase in (COLORS_ZH["blue"], POSITIONS_ZH[position], SIZES_ZH["small"], COLORS_ZH["red"],
                       SHAPES_ZH["circle"]):
            text = text.replace(phrase, " ", 1)
        zh.update(text.split())
    en.update(COLORS, SHAPES, SIZES)
    zh.update(COLORS_ZH.values(), SHAPES_ZH.values(), SIZES_ZH.values(), POSITIONS_ZH.values())
    return frozenset(en), tuple(sorted(zh, key=len, reverse=True))


_EN_WORDS, _ZH_PHRASES = _caption_words()


def unknown_words(prompt: str) -> list[str]:
    """The prompt's words (after normalising) that no caption uses, in order, each once."""
    out: list[str] = []
    for word in normalize_prompt(prompt).split():
        pieces = _split_chinese(word) if _CJK.search(word) else [(word, word in _EN_WORDS)]
        for piece, known in pieces:
            if not known and piece not in out:
                out.append(piece)
    return out


def _split_chinese(word: str) -> list[tuple[str, bool]]:
    """Greedy longest match of the caption phrases; what lies between them is unknown."""
    pieces: list[tuple[str, bool]] = []
    unknown, i = "", 0
    while i < len(word):
        match = next((p for p in _ZH_PHRASES if word.startswith(p, i)), None)
        if match is None:
            unknown += word[i]
            i += 1
            continue
        if unknown:
            pieces.append((unknown, False))
            unknown = ""
        pieces.append((match, True))
        i += len(match)
    if unknown:
        pieces.append((unknown, False))
    return pieces
