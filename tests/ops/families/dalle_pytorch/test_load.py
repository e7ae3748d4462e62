"""The family's `load`: the bundle assembled from one train_dalle.py file (and a separate VAE)."""
from __future__ import annotations

import pytest
import torch

from tessera.bench.references import import_dalle_pytorch
from tessera.ops.families.base import ModelLoadError, ModelSpec
from tessera.ops.families.dalle_pytorch import load


def _load(spec):
    return load(spec, "cpu", torch.float32)  # the CLIP BPE of the installed dalle_pytorch (the test extra)


def test_bundle(make_checkpoint):
    path, dalle = make_checkpoint("tiny_dalle", num_text_tokens=49408)
    bundle = _load(ModelSpec(path=str(path)))
    assert (bundle.kind, bundle.name, bundle.clip) == ("dalle-pytorch", "tiny_dalle", None)
    model = bundle.transformer
    assert (model.text_len, model.image_len, model.image_vocab) == (8, 16, 24)
    assert bundle.dvae.image_len == 16 and bundle.tokenizer.context == 8
    # generate.py's filter_thres 0.9 over 49408 + 8 text and 24 image logits: 4944, capped at 24
    assert bundle.sampling.top_k == 24 and bundle.details["top_k"] == 24
    assert bundle.details["version"] == "1.6.6" and bundle.details["vae_class"] == "DiscreteVAE"
    text = torch.tensor([bundle.tokenizer.encode_prompt("a red cube").ids])
    cache = model.new_cache(1, "cpu", torch.float32)
    with torch.no_grad():
        ref = dalle(text.clone())[:, -1, dalle.num_text_tokens:]
    torch.testing.assert_close(model.prefill(text, cache, torch.tensor([0])), ref, atol=1e-4, rtol=1e-4)


def test_a_tokenizer_larger_than_the_text_embedding_is_refused(make_checkpoint):
    path, _ = make_checkpoint("tiny_dalle")  # 100 text tokens; the CLIP BPE has 49408
    with pytest.raises(ModelLoadError, match="49408 tokens but the checkpoint was trained with num_text_tokens 100"):
        _load(ModelSpec(path=str(path)))


def test_mismatched_separate_vae(make_checkpoint, tmp_path):
    path, _ = make_checkpoint("tiny_dalle", num_text_tokens=49408)
    dp = import_dalle_pytorch()
    vae_params = dict(image_size=16, num_layers=2, num_tokens=30, codebook_dim=16, hidden_dim=8)
    vae_path = tmp_path / "vae.pt"
    torch.save({"hparams": vae_params, "weights": dp.DiscreteVAE(**vae_params).state_dict()}, vae_path)
    with pytest.raises(ModelLoadError, match="mismatched --vae"):
        _load(ModelSpec(path=str(path), vae=str(vae_path)))
