"""The family's `load`: the bundle assembled from one train_dalle.py file (and a separate VAE)."""
from __future__ import annotations

import pytest
import torch

from tessera.ops.families.base import ModelLoadError, ModelSpec, ModelUnsupported
from tessera.ops.families.dalle_pytorch import load
from tests.ops.families.references import import_dalle_pytorch


def _load(spec):
    try:
        return load(spec, "cpu", torch.float32)
    except ModelUnsupported as e:  # no CLIP BPE merges on this machine
        if "BPE" in str(e):
            pytest.skip(str(e))
        raise


def test_bundle(make_checkpoint):
    path, dalle = make_checkpoint("tiny_dalle")
    bundle = _load(ModelSpec(path=str(path)))
    assert (bundle.kind, bundle.name, bundle.clip) == ("dalle-pytorch", "tiny_dalle", None)
    model = bundle.transformer
    assert (model.text_len, model.image_len, model.image_vocab) == (8, 16, 24)
    assert bundle.dvae.image_len == 16 and bundle.tokenizer.context == 8
    # generate.py's filter_thres 0.9 over 100 + 8 text and 24 image logits
    assert bundle.sampling.top_k == 13 and bundle.details["top_k"] == 13
    assert bundle.details["version"] == "1.6.6" and bundle.details["vae_class"] == "DiscreteVAE"
    # the toy model knows 100 text tokens, the CLIP BPE 49408: fold the ids (0 stays padding)
    text = torch.tensor([bundle.tokenizer.encode_prompt("a red cube").ids]) % 100
    cache = model.new_cache(1, "cpu", torch.float32)
    with torch.no_grad():
        ref = dalle(text.clone())[:, -1, dalle.num_text_tokens:]
    torch.testing.assert_close(model.prefill(text, cache, torch.tensor([0])), ref, atol=1e-4, rtol=1e-4)


def test_mismatched_separate_vae(make_checkpoint, tmp_path):
    path, _ = make_checkpoint("tiny_dalle")
    dp = import_dalle_pytorch()
    vae_params = dict(image_size=16, num_layers=2, num_tokens=30, codebook_dim=16, hidden_dim=8)
    vae_path = tmp_path / "vae.pt"
    torch.save({"hparams": vae_params, "weights": dp.DiscreteVAE(**vae_params).state_dict()}, vae_path)
    with pytest.raises(ModelLoadError, match="mismatched --vae"):
        _load(ModelSpec(path=str(path), vae_path=str(vae_path)))
