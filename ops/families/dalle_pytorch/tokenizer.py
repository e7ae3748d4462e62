"""DALLE-pytorch's text tokenizers, reimplemented so serving never imports dalle_pytorch.

DALLE-pytorch 1.6.6 (dalle_pytorch/tokenizer.py) tokenizes a prompt with one of:

  SimpleTokenizer  OpenAI CLIP's byte-level BPE read from a merges file (bpe_simple_vocab_16e6.txt):
                   ftfy + double html unescape, whitespace collapsed, lower-cased, split with
                   CLIP's regex; no start/end tokens; vocab_size 49408 whatever the file holds.
  HugTokenizer     a HuggingFace `tokenizers` JSON, with a ByteLevel(trim_offsets=True)
                   post-processor set on it.

`tokenize([text], text_seq_len, truncate_text=False)` pads the ids with 0 to text_seq_len and
raises RuntimeError for a longer prompt; here that is a PromptError. The null condition
DALLE-pytorch's classifier-free guidance uses is all padding (`[0] * text_seq_len`).
"""
from __future__ import annotations

import gzip
import html
import importlib.util
import os
from functools import lru_cache

from tessera.ops.families.base import Encoded, ModelLoadError, ModelUnsupported, PromptError, PromptTooLong

_GZIP_MAGIC = b"\x1f\x8b"
_CLIP_VOCAB_SIZE = 49408            # what DALLE-pytorch's SimpleTokenizer reports
_CLIP_MERGES = 49152 - 256 - 2      # merges it reads (after the "#version" line)
_CACHE_LIMIT = 200_000              # bpe cache entries before it is cleared (a long-running server)
BPE_HINT = "pass --bpe-path FILE (CLIP's bpe_simple_vocab_16e6.txt[.gz] or a tokenizers JSON)"


# -- CLIP's SimpleTokenizer -------------------------------------------------------------------

@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(word[:-1], word[1:])}


def _basic_clean(text: str) -> str:
    import ftfy
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


class ClipBPE:
    """CLIP's SimpleTokenizer as DALLE-pytorch 1.6.6 carries it (encode only)."""

    def __init__(self, merges_text: str):
        import regex
        self._regex = regex
        merges = merges_text.split("\n")[1:_CLIP_MERGES + 1]
        merges = [tuple(m.split()) for m in merges]
        base = list(bytes_to_unicode().values())
        vocab = base + [v + "</w>" for v in base]
        for merge in merges:
            vocab.append("".join(merge))
        vocab.extend(["<|startoftext|>", "<|endoftext|>"])
        self.byte_encoder = bytes_to_unicode()
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.vocab_size = _CLIP_VOCAB_SIZE
        self._special = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.cache = dict(self._special)
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)

    def bpe(self, token: str) -> str:
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        ranks = self.bpe_ranks
        inf = float("inf")
        while True:
            bigram = min(pairs, key=lambda pair: ranks.get(pair, inf))
            if bigram not in ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache = dict(self._special)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        text = self._regex.sub(r"\s+", " ", _basic_clean(text)).strip().lower()
        ids: list[int] = []
        for token in self._regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids


# -- HugTokenizer -----------------------------------------------------------------------------

class HugJSON:
    """DALLE-pytorch's HugTokenizer: a tokenizers JSON with a ByteLevel(trim_offsets=True)
    post-processor."""

    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer
            from tokenizers.processors import ByteLevel
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ModelLoadError(f"{path}: a tokenizers JSON needs the `tokenizers` package ({e})") from e
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - the library raises plain Exceptions
            raise ModelLoadError(f"{path}: not a readable tokenizers JSON ({e}); {BPE_HINT}") from e
        tokenizer.post_processor = ByteLevel(trim_offsets=True)
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)


# -- the PromptTokenizer ----------------------------------------------------------------------

class DallePytorchTokenizer:
    """A PromptTokenizer over either tokenizer: `context` ids, 0 padded."""

    def __init__(self, impl: ClipBPE | HugJSON, name: str, text_seq_len: int):
        self._impl = impl
        self.name = name
        self.context = int(text_seq_len)
        self.vocab_size = impl.vocab_size

    def encode_prompt(self, prompt: str) -> Encoded:
        if not isinstance(prompt, str):
            raise PromptError("the prompt must be text")
        ids = self._impl.encode(prompt)
        if not ids:
            raise PromptError("prompt is empty once normalised")
        if len(ids) > self.context:
            raise PromptTooLong(len(ids), self.context)
        return Encoded(ids + [0] * (self.context - len(ids)))

    def empty(self) -> list[int]:
        return [0] * self.context

    def unknown_words(self, prompt: str) -> list[str]:
        return []


def default_bpe_path() -> str | None:
    """The merges file an installed dalle_pytorch ships, found without importing it."""
    try:
        spec = importlib.util.find_spec("dalle_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [os.path.dirname(spec.origin)]
    for d in dirs:
        for name in ("bpe_simple_vocab_16e6.txt", "bpe_simple_vocab_16e6.txt.gz"):
            path = os.path.join(d, "data", name)
            if os.path.isfile(path):
                return path
    return None


def load_tokenizer(bpe_path: str | None, text_seq_len: int):
    """DALLE-pytorch's tokenizer for a checkpoint with `text_seq_len` text positions.

    `bpe_path`: CLIP's BPE merges (plain text or gzip, told apart by the gzip magic bytes) or a
    HuggingFace tokenizers JSON; None: the merges file of an installed dalle_pytorch package.
    """
    if int(text_seq_len) < 1:
        raise ModelLoadError(f"text_seq_len must be at least 1 (got {text_seq_len})")
    if bpe_path is None:
        bpe_path = default_bpe_path()
        if bpe_path is None:
            raise ModelUnsupported(
                "DALLE-pytorch's default tokenizer needs CLIP's BPE merges, and no installed "
                f"dalle_pytorch package ships them: {BPE_HINT}")
    path = os.fspath(bpe_path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ModelLoadError(f"cannot read the BPE file {path}: {e.strerror or e}; {BPE_HINT}") from e
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ModelLoadError(f"{path}: a broken gzip file ({e}); {BPE_HINT}") from e
    elif raw.lstrip()[:1] == b"{":
        impl = HugJSON(path)
        return DallePytorchTokenizer(impl, f"tokenizers JSON ({impl.vocab_size} tokens)", text_seq_len)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{path}: not UTF-8 BPE merges ({e}); {BPE_HINT}") from e
    lines = text.split("\n")
    merges = [m for m in lines[1:_CLIP_MERGES + 1] if m.strip()]
    # CLIP's file's first line holds "#version: 0.2"; SimpleTokenizer skips that line unread,
    # so a file without it (or without a pair after it) is some other text, not merges.
    if "#version" not in lines[0] or not merges or any(len(m.split()) != 2 for m in merges):
        raise ModelLoadError(f"{path}: not a BPE merges file (a '#version' line, then one 'a b' pair a "
                             f"line); {BPE_HINT}")
    impl = ClipBPE(text)
    return DallePytorchTokenizer(impl, f"CLIP BPE ({impl.vocab_size} tokens)", text_seq_len)
