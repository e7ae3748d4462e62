"""Byte-level BPE over English and Chinese captions, with a fixed text context.

    >>> tok = TextTokenizer.from_file("tokenizer.json", context=32)
    >>> tok.encode("A small RED circle!")   # list of `context` ids, right-padded
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from tessera.ops.families.base import Encoded, PromptError, PromptTooLong

PAD = "<pad>"
_PUNCT = re.compile(r"[^\w\s]+", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalize_prompt(prompt: str) -> str:
    """Lower case, no punctuation, single spaces; full-width forms folded (NFKC)."""
    text = unicodedata.normalize("NFKC", prompt).lower()
    text = _PUNCT.sub(" ", text).replace("_", " ")
    return _SPACE.sub(" ", text).strip()


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, context: int):
        self.tokenizer = tokenizer
        self.context = context
        pad = tokenizer.token_to_id(PAD)
        if pad is None:
            raise ValueError(f"tokenizer has no {PAD} token")
        self.pad_id = pad

    @classmethod
    def from_file(cls, path: str, context: int) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)), context)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, context: int) -> TextTokenizer:
        tok = Tokenizer(models.BPE())
        # Each CJK character stands alone before byte-level BPE: otherwise an unspaced
        # Chinese caption merges into phrase tokens that span attributes (背景上左上角…),
        # and the model could not recombine 红色 with 圆形 in a pair it never saw.
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"[\u3400-\u9fff]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[PAD],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator((normalize_prompt(t) for t in texts), trainer)
        return cls(tok, context)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, prompt: str) -> list[int]:
        """Token ids padded to `context`; PromptError if empty or too long (never cut)."""
        text = normalize_prompt(prompt)
        if not text:
            raise PromptError("prompt is empty once punctuation and spaces are removed")
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.context:
            raise PromptTooLong(len(ids), self.context)
        return ids + [self.pad_id] * (self.context - len(ids))

    @property
    def name(self) -> str:
        return f"byte-level BPE ({self.vocab_size} tokens)"

    def encode_prompt(self, prompt: str) -> Encoded:
        return Encoded(self.encode(prompt))

    def unknown_words(self, prompt: str) -> list[str]:
        """Words no training caption used: the shapes model cannot follow them."""
        from tessera.ops.shapes.vocabulary import unknown_words  # the shapes world's words
        return unknown_words(prompt)

    def empty(self) -> list[int]:
        """The unconditional (caption-dropped) text: all padding."""
        return [self.pad_id] * self.context
