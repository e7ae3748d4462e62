"""Our DALLE-pytorch tokenizers give DALLE-pytorch 1.6.6's own ids (its SimpleTokenizer and
HugTokenizer as the oracle), from the shipped merges file, gzipped and plain copies of it, and a
tokenizers JSON trained here."""
from __future__ import annotations

import gzip
import shutil

import pytest

from tessera.bench.references import import_dalle_pytorch
from tessera.ops.families.base import ModelLoadError, ModelUnsupported, PromptError, PromptTokenizer
from tessera.ops.families.dalle_pytorch import tokenizer as tok
from tessera.ops.families.dalle_pytorch.tokenizer import load_tokenizer

TEXT_SEQ_LEN = 80

PROMPTS = [
    "a painting of a fox sitting in a field at sunrise",                   # English
    "A Photo Of An Avocado Armchair",                                      # case
    "一只坐在垫子上的猫，水彩画",                                           # Chinese (with CJK punctuation)
    "hello, world!!! (what?) -- \"quotes\" & <tags> 100% #1 ... ;:",       # punctuation, digits
    "🐱 a cat 🎨 painting 👩‍🚀 astronaut 🇫🇷",                            # emoji, ZWJ, flags
    "café déjà vu, naïve Zoë, Ångström, façade, Straße",                   # accents
    "don't &amp;amp; it's we'll they've I'm you'd",                        # contractions, html
    "  lots   of\twhitespace\n\nand newlines  ",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ and â€™ mojibake",                          # ftfy fixes
]


@pytest.fixture(scope="module")
def reference():
    dalle_pytorch = import_dalle_pytorch()
    from dalle_pytorch import tokenizer as ref
    return ref


@pytest.fixture(scope="module")
def merges_path():
    path = tok.default_bpe_path()
    assert path is not None, "the test environment installs dalle_pytorch with its merges file"
    return path


def _ref_ids(ref_tokenizer, text, n=TEXT_SEQ_LEN):
    return ref_tokenizer.tokenize([text], n, truncate_text=False)[0].tolist()


def test_default_vocabulary_matches_simple_tokenizer(reference):
    ours = load_tokenizer(None, TEXT_SEQ_LEN)
    assert isinstance(ours, PromptTokenizer)
    assert ours.name == "CLIP BPE (49408 tokens)"
    assert ours.context == TEXT_SEQ_LEN and ours.vocab_size == reference.tokenizer.vocab_size
    for text in PROMPTS:
        ids = ours.encode_prompt(text).ids
        assert len(ids) == TEXT_SEQ_LEN
        assert ids == _ref_ids(reference.tokenizer, text), text
    assert ours.empty() == [0] * TEXT_SEQ_LEN
    assert ours.unknown_words("anything at all") == []


@pytest.mark.parametrize("packed", ["gzip", "plain"])
def test_explicit_merges_file_gzipped_or_plain(reference, merges_path, tmp_path, packed):
    # a name that does not say what the file is: the gzip magic bytes decide
    path = tmp_path / "merges.bin"
    if packed == "gzip":
        with open(merges_path, "rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copy(merges_path, path)
    ours = load_tokenizer(str(path), TEXT_SEQ_LEN)
    oracle = reference.SimpleTokenizer(merges_path)
    for text in PROMPTS:
        assert ours.encode_prompt(text).ids == _ref_ids(oracle, text), text


def test_tokenizers_json_matches_hug_tokenizer(reference, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

    corpus = [t for t in PROMPTS] + ["the quick brown fox jumps over the lazy dog"] * 5 \
        + ["an armchair in the shape of an avocado", "a watercolor of a cat"] * 5
    t = Tokenizer(models.BPE(unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["[PAD]", "[UNK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path / "tok.json"
    t.save(str(path))

    ours = load_tokenizer(str(path), TEXT_SEQ_LEN)
    oracle = reference.HugTokenizer(str(path))
    assert ours.name == f"tokenizers JSON ({oracle.vocab_size} tokens)"
    assert ours.vocab_size == oracle.vocab_size
    for text in PROMPTS + ["the quick brown fox", "avocado armchair"]:
        assert ours.encode_prompt(text).ids == _ref_ids(oracle, text), text


def test_over_long_and_empty_prompts(reference):
    ours = load_tokenizer(None, 8)
    fits = "one two three four five six seven eight"
    assert ours.encode_prompt(fits).ids == _ref_ids(reference.tokenizer, fits, 8)
    too_long = fits + " nine"
    with pytest.raises(RuntimeError):   # what DALLE-pytorch does with it
        reference.tokenizer.tokenize([too_long], 8, truncate_text=False)
    with pytest.raises(PromptError, match="^prompt is 9 tokens long; the limit is 8 tokens$"):
        ours.encode_prompt(too_long)  # the bundled model's wording (tests/ops/families/tessera/test_loading.py)
    for empty in ("", "   \n\t "):
        with pytest.raises(PromptError):
            ours.encode_prompt(empty)


def test_missing_default_vocabulary_and_bad_files(monkeypatch, tmp_path):
    monkeypatch.setattr(tok, "default_bpe_path", lambda: None)
    with pytest.raises(ModelUnsupported, match="--bpe-path FILE"):
        load_tokenizer(None, 16)
    with pytest.raises(ModelLoadError, match="nope.txt"):
        load_tokenizer(str(tmp_path / "nope.txt"), 16)
    junk = tmp_path / "junk.txt"
    junk.write_text("#version\nthis line has too many words\n")
    with pytest.raises(ModelLoadError, match="junk.txt"):
        load_tokenizer(str(junk), 16)
    for text in ("hello\n", "hello", "#version: 0.2\n"):  # one word; no pairs after the header
        junk.write_text(text)
        with pytest.raises(ModelLoadError, match="junk.txt: not a BPE merges file"):
            load_tokenizer(str(junk), 16)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{ not json")
    with pytest.raises(ModelLoadError, match="bad.json"):
        load_tokenizer(str(bad_json), 16)


def test_default_path_found_without_importing_dalle_pytorch():
    import subprocess
    import sys
    code = ("import sys; from tessera.ops.families.dalle_pytorch.tokenizer import default_bpe_path; "
            "p = default_bpe_path(); assert p and 'dalle_pytorch' not in sys.modules, p; print(p)")
    from pathlib import Path
    root = Path(__file__).resolve().parents[4]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(("bpe_simple_vocab_16e6.txt", "bpe_simple_vocab_16e6.txt.gz"))
