"""Tiny min-dalle models built with min-dalle's own classes, saved in its layout.

Layout under a session tmp dir:   ROOT/dalle_bart_mini/{encoder.pt,decoder.pt,vocab.json,merges.txt}
                                  ROOT/vqgan/detoker.pt
The VQGAN has min-dalle's fixed shape (built once a session); the BART halves are 2 layers,
128 wide (2 heads of 64, as min-dalle's mini/mega heads are 64 wide), image vocabulary 16384.
The vocabulary is a small byte-level BPE learned from a few sentences. The builders are
tessera.bench.checkpoints', which the families bench builds its models with too.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tessera.bench.checkpoints import CORPUS, build_detoker, save_min_dalle
from tessera.bench.references import import_min_dalle

TEXT_VOCAB = 256
EMBED = 128
HEADS = EMBED // 64
GLU = 96
LAYERS = 2
IMAGE_VOCAB = 2 ** 14


@dataclass
class Oracle:
    root: Path
    name: str
    encoder: torch.nn.Module      # min-dalle's DalleBartEncoder, from the saved file
    decoder: torch.nn.Module      # min-dalle's DalleBartDecoder
    tokenizer: object             # min-dalle's TextTokenizer


@pytest.fixture(scope="session")
def detoker_file(tmp_path_factory) -> Path:
    return build_detoker(tmp_path_factory.mktemp("vqgan") / "detoker.pt")


SHAPE = dict(layers=LAYERS, embed=EMBED, heads=HEADS, glu=GLU, text_vocab=TEXT_VOCAB, image_vocab=IMAGE_VOCAB)


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
