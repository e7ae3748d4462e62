"""min-dalle's text tokenizer (BART byte-pair encoding), reimplemented.

What min-dalle 0.4.11 does to a prompt, and where:
    TextTokenizer.tokenize     emoji.demojize(text, delimiters=('', '')): an emoji becomes its
                               name ("🐶" -> "dog_face", no colons); then text.lower() and
                               .encode("ascii", errors="ignore"): accents and every other
                               non-ASCII character are dropped ("café" -> "caf"); words are
                               split on " " only (empty words skipped); each word is BPE'd from
                               ["Ġ"] + its characters with merges.txt's ranks, a subword missing
                               from vocab.json becomes <unk>; the ids are [<s>] + ... + [</s>].
    MinDalle.init_tokenizer    merges = merges.txt's text .split("\n")[1:-1]: the first line
                               (the "#version" header) and the last piece (empty after the
                               trailing newline) are skipped, exactly as here.
    generate_raw_image_stream  tokens[:64] (an over-long prompt loses its </s> too), padded with
                               1 to 64; its unconditional row is [tokens[0], tokens[-1]] then 1s.
`is_verbose` only prints the subwords.
"""
from __future__ import annotations

import json
from math import inf

from tessera.ops.families.base import Encoded, ModelLoadError, PromptError

PAD = 1  # min-dalle pads with 1 (numpy.ones), whatever vocab.json calls it


class MinDalleTokenizer:
    """PromptTokenizer for min-dalle's vocab.json / merges.txt."""

    def __init__(self, vocab: dict[str, int], merges: list[str], context: int = 64):
        try:
            from emoji import demojize
        except ImportError as e:  # min-dalle's own dependency
            raise ModelLoadError("min-dalle's tokenizer needs the emoji package (pip install emoji), "
                                 "as min-dalle does") from e
        self._demojize = demojize
        missing = [t for t in ("<s>", "</s>", "<unk>") if t not in vocab]
        if missing:
            raise ModelLoadError(f"min-dalle vocab.json lacks {', '.join(missing)}")
        self.vocab = vocab
        pairs = [tuple(pair.split()) for pair in merges]
        self.ranks = dict(zip(pairs, range(len(pairs))))
        self.bos, self.eos, self.unk = vocab["<s>"], vocab["</s>"], vocab["<unk>"]
        self.context = context
        self.name = f"BART BPE ({len(vocab)} tokens)"
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_files(cls, vocab_path: str, merges_path: str, context: int = 64) -> "MinDalleTokenizer":
        try:
            with open(vocab_path, encoding="utf8") as f:
                vocab = json.load(f)
            with open(merges_path, encoding="utf8") as f:
                merges = f.read().split("\n")[1:-1]  # as MinDalle.init_tokenizer reads it
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"min-dalle tokenizer files {vocab_path}, {merges_path}: {e}") from e
        return cls(vocab, merges, context)

    # -- min-dalle's TextTokenizer --------------------------------------------------------------
    def normalise(self, text: str) -> str:
        text = self._demojize(text, delimiters=("", ""))
        return text.lower().encode("ascii", errors="ignore").decode()

    def bpe(self, word: str) -> list[str]:
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        subwords = [chr(ord(" ") + 256)] + list(word)  # "Ġ": the word's leading space
        while len(subwords) > 1:
            pairs = list(zip(subwords[:-1], subwords[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, inf))
            if best not in self.ranks:
                break
            i = pairs.index(best)
            subwords = subwords[:i] + [subwords[i] + subwords[i + 1]] + subwords[i + 2:]
        if len(self._cache) < 65536:
            self._cache[word] = subwords
        return subwords

    def tokenize(self, text: str) -> list[int]:
        """min-dalle's TextTokenizer.tokenize: [<s>] + ids + [</s>], not cut."""
        text = self.normalise(text)
        ids = [self.vocab.get(sub, self.unk)
               for word in text.split(" ") if len(word) > 0
               for sub in self.bpe(word)]
        return [self.bos] + ids + [self.eos]

    # -- PromptTokenizer ------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> Encoded:
        ids = self.tokenize(prompt)
        if len(ids) <= 2:
            raise PromptError("prompt is empty once normalised as min-dalle does "
                              "(emoji named, lower-case ASCII only)")
        notes = []
        if len(ids) > self.context:
            # generate_raw_image_stream: tokens[:64], so the </s> goes too
            notes.append(f"prompt cut to {self.context} tokens ({len(ids)} before)")
            ids = ids[:self.context]
        return Encoded(ids + [PAD] * (self.context - len(ids)), notes)

    def empty(self) -> list[int]:
        """min-dalle's unconditional row: the prompt's first and last tokens, then padding.
        For a prompt that fits that is <s>, </s>; an over-long prompt's last token after the
        cut is a word piece in min-dalle, which one shared null prompt cannot follow."""
        return [self.bos, self.eos] + [PAD] * (self.context - 2)

    def unknown_words(self, prompt: str) -> list[str]:
        return []

