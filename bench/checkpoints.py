"""Random-weight models built with the reference projects' own classes, saved in the layouts
those projects write: a DALLE-pytorch checkpoint as its train_dalle.py saves one, and a
min-dalle models_root folder as MinDalle reads it.

The families bench (families.py) builds them at realistic shapes, the tests
(tests/ops/families/*/conftest.py) at tiny ones; both through these functions, so what the
bench measures is what the tests load.

    from tessera.bench.checkpoints import save_checkpoint, train_dalle_hparams
    from tessera.bench.references import import_dalle_pytorch
    dp = import_dalle_pytorch()
    dalle = dp.DALLE(vae=dp.DiscreteVAE(**vae_params), **shape)
    save_checkpoint(path, dalle, train_dalle_hparams(shape), vae_params)
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from tessera.bench.references import import_min_dalle

# -- DALLE-pytorch ----------------------------------------------------------------------------

# What train_dalle.py saves beside the shape: DALLE 1.6.6's defaults for its other arguments
# (full attention, rotary embeddings, shifted tokens, no sharing), as the bench and the tests build it.
DALLE_ARGUMENTS = dict(reversible=False, loss_img_weight=7, attn_types=("full",), ff_dropout=0.0,
                       attn_dropout=0.0, stable=False, shift_tokens=True, rotary_emb=True, shared_attn_ids=None,
                       shared_ff_ids=None, share_input_output_emb=False)


def train_dalle_hparams(shape: dict) -> dict:
    """The hparams dict train_dalle.py saves for a DALLE of `shape` (dim, depth, heads, dim_head,
    text_seq_len, num_text_tokens) built with the other arguments at DALLE_ARGUMENTS."""
    return dict(shape, **DALLE_ARGUMENTS)


def save_checkpoint(path, dalle, hparams: dict, vae_params: dict, drop_hparams=(), drop_weights=()):
    """train_dalle.py's exact layout. drop_*: keys left out, as a damaged or older file lacks them."""
    hp = {k: v for k, v in hparams.items() if k not in drop_hparams}
    weights = {k: v for k, v in dalle.state_dict().items() if k not in drop_weights}
    torch.save({"hparams": hp, "vae_params": vae_params, "epoch": 3, "version": "1.6.6",
                "vae_class_name": "DiscreteVAE", "weights": weights, "opt_state": {}, "scheduler_state": None},
               path)
    return path


# -- min-dalle --------------------------------------------------------------------------------

# The sentences a test BPE is learned from (the bench adds its prompts).
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


def save_min_dalle(model_dir: Path, shape: dict, corpus: str, merges: int, seed: int, perturb: bool) -> None:
    """min-dalle's own DalleBartEncoder and DalleBartDecoder of `shape` (layers, embed, heads, glu,
    text_vocab, image_vocab), seeded, saved with a BPE learned from `corpus` as MinDalle reads
    them: model_dir/{encoder.pt,decoder.pt,vocab.json,merges.txt}. perturb: LayerNorms off their
    defaults. Each half is saved and dropped before the next is built (Mini's shape on a small
    machine)."""
    md = import_min_dalle()
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab, rules = learn_bpe(corpus, merges)
    if max(vocab.values()) >= shape["text_vocab"]:
        raise ValueError(f"the BPE learned has {len(vocab)} tokens, more than text_vocab {shape['text_vocab']}")
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
