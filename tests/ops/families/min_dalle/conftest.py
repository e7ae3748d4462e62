"""Tiny min-dalle models built with min-dalle's own classes, saved in its layout.

Layout under a session tmp dir:   ROOT/dalle_bart_mini/{encoder.pt,decoder.pt,vocab.json,merges.txt}
                                  ROOT/vqgan/detoker.pt
The VQGAN has min-dalle's fixed shape (built once a session); the BART halves are 2 layers,
128 wide (2 heads of 64, as min-dalle's mini/mega heads are 64 wide), image vocabulary 16384.
The vocabulary is a small byte-level BPE learned here from a few sentences.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


from tests.ops.families.references import import_min_dalle


TEXT_VOCAB = 256
EMBED = 128
HEADS = EMBED // 64
GLU = 96
LAYERS = 2
IMAGE_VOCAB = 2 ** 14

CORPUS = """a photo of the cat sitting on the mat with a hat the dog eats an orange
avocado armchair in the shape of an avocado red heart dog face smiling face with heart eyes
the sun sets over the sea while the cat sleeps on a chair a painting of the city at night"""


def learn_bpe(corpus: str, merges: int) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE of the corpus's words ("Ġ" + characters), min-dalle's special tokens first."""
    words = Counter(corpus.split())
    seqs = {w: ["Ġ"] + list(w) for w in words}
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    # base symbols: the corpus's letters and a few more; 'z', 'q', 'x' and digits are left out (-> <unk>)
    for ch in ["Ġ"] + sorted(set("abcdefghijklmnoprstuvwy_.,!?'-") | set("".join(words))):
        vocab.setdefault(ch, len(vocab))
    rules = []
    for _ in range(merges):
        pairs = Counter()
        for w, s in seqs.items():
            for p in zip(s, s[1:]):
                pairs[p] += words[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        rules.append(f"{a} {b}")
        vocab.setdefault(a + b, len(vocab))
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return vocab, rules


def _perturb_norms(module: torch.nn.Module, gen: torch.Generator) -> None:
    """LayerNorms off their defaults, so a weight read under the wrong name shows."""
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


@dataclass
class Oracle:
    root: Path
    name: str
    encoder: torch.nn.Module      # min-dalle's DalleBartEncoder, from the saved file
    decoder: torch.nn.Module      # min-dalle's DalleBartDecoder
    tokenizer: object             # min-dalle's TextTokenizer


def build_detoker(path: Path) -> Path:
    """min-dalle's VQGanDetokenizer (fixed shape), seeded, its output layer scaled so that most
    pixels land inside 0..1 (a random one clips nearly everything to 0 or 255)."""
    md = import_min_dalle()
    torch.manual_seed(0)
    with torch.no_grad():
        vq = md.models.VQGanDetokenizer()
        vq.decoder.conv_out.weight.mul_(0.05)
        vq.decoder.conv_out.bias.fill_(0.5)
    torch.save(vq.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def detoker_file(tmp_path_factory) -> Path:
    return build_detoker(tmp_path_factory.mktemp("vqgan") / "detoker.pt")


SHAPE = dict(layers=LAYERS, embed=EMBED, heads=HEADS, glu=GLU, text_vocab=TEXT_VOCAB, image_vocab=IMAGE_VOCAB)


def save_min_dalle(model_dir: Path, shape: dict, corpus: str, merges: int, seed: int, perturb: bool) -> None:
    """min-dalle's own DalleBartEncoder and DalleBartDecoder of `shape` (layers, embed, heads, glu,
    text_vocab, image_vocab), seeded, saved with a BPE learned from `corpus` as MinDalle reads
    them: model_dir/{encoder.pt,decoder.pt,vocab.json,merges.txt}. perturb: LayerNorms off their
    defaults. Each half is saved and dropped before the next is built (Mini's shape on a small
    machine)."""
    md = import_min_dalle()
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab, rules = learn_bpe(corpus, merges)
    assert max(vocab.values()) < shape["text_vocab"]
    (model_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf8")
    (model_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(rules) + "\n", encoding="utf8")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    halves = {"encoder.pt": lambda: md.models.DalleBartEncoder(
                  layer_count=shape["layers"], embed_count=shape["embed"], attention_head_count=shape["heads"],
                  text_vocab_count=shape["text_vocab"], text_token_count=64, glu_embed_count=shape["glu"],
                  device="cpu"),
              "decoder.pt": lambda: md.models.DalleBartDecoder(
                  image_vocab_count=shape["image_vocab"], embed_count=shape["embed"],
                  attention_head_count=shape["heads"], glu_embed_count=shape["glu"], layer_count=shape["layers"],
                  device="cpu")}
    with torch.no_grad():
        for file, build in halves.items():
            half = build()
            if perturb:
                _perturb_norms(half, gen)
            torch.save(half.state_dict(), model_dir / file)
            del half


def build_root(root: Path, detoker: Path, name: str = "dalle_bart_mini", seed: int = 1) -> Path:
    (root / "vqgan").mkdir(parents=True)
    os.symlink(detoker, root / "vqgan" / "detoker.pt")
    save_min_dalle(root / name, SHAPE, CORPUS, 90, seed, perturb=True)
    return root


@pytest.fixture(scope="session")
def oracle(tmp_path_factory, detoker_file) -> Oracle:
    md = import_min_dalle()
    root = build_root(tmp_path_factory.mktemp("min_dalle_root"), detoker_file)
    model_dir = root / "dalle_bart_mini"
    enc = md.models.DalleBartEncoder(layer_count=LAYERS, embed_count=EMBED, attention_head_count=HEADS,
                                     text_vocab_count=TEXT_VOCAB, text_token_count=64, glu_embed_count=GLU,
                                     device="cpu").eval()
    enc.load_state_dict(torch.load(model_dir / "encoder.pt", weights_only=True))
    dec = md.models.DalleBartDecoder(image_vocab_count=IMAGE_VOCAB, embed_count=EMBED, attention_head_count=HEADS,
                                     glu_embed_count=GLU, layer_count=LAYERS, device="cpu").eval()
    dec.load_state_dict(torch.load(model_dir / "decoder.pt", weights_only=True))
    vocab = json.loads((model_dir / "vocab.json").read_text(encoding="utf8"))
    merges = (model_dir / "merges.txt").read_text(encoding="utf8").split("\n")[1:-1]  # as MinDalle reads them
    from min_dalle.text_tokenizer import TextTokenizer
    return Oracle(root, "dalle_bart_mini", enc, dec, TextTokenizer(vocab, merges))


@pytest.fixture(scope="session")
def bundle(oracle):
    from tessera.ops.families.base import ModelSpec
    from tessera.ops.families.min_dalle import load
    return load(ModelSpec(path=str(oracle.root)), "cpu", torch.float32)
