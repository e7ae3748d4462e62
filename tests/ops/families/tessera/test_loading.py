"""Model directories load, and a broken one is a clear error naming the file."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tessera.ops.families.tessera import ModelLoadError, PromptError, load_model_dir, normalize_prompt


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_tiny_model_directory_loads(tiny_model_dir):
    bundle = load_model_dir(tiny_model_dir)
    assert bundle.image_size == 64
    assert bundle.transformer.cfg.image_len == bundle.dvae.cfg.grid ** 2
    assert not bundle.transformer.training


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "dvae.safetensors",
                                  "transformer.safetensors", "clip.safetensors"])
def test_missing_file_is_named(model_copy, name):
    (model_copy / name).unlink()
    with pytest.raises(ModelLoadError, match=name.replace(".", r"\.")):
        load_model_dir(model_copy)


def test_corrupt_tensor_file_is_named(model_copy):
    path = model_copy / "transformer.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="transformer.safetensors"):
        load_model_dir(model_copy)


def test_config_that_does_not_match_weights_is_named(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["transformer"]["d_model"] *= 2
    (model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="transformer.safetensors.*shape"):
        load_model_dir(model_copy)


def test_nan_weights_are_refused(model_copy):
    from safetensors.torch import load_file, save_file
    path = model_copy / "clip.safetensors"
    state = load_file(str(path))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match="NaN"):
        load_model_dir(model_copy)


def test_missing_directory():
    with pytest.raises(ModelLoadError, match="not found"):
        load_model_dir("/nonexistent/model")


def test_prompts_are_normalised_then_checked(tiny_model_dir):
    tok = load_model_dir(tiny_model_dir).tokenizer
    assert normalize_prompt("  A Small,  RED circle!! ") == "a small red circle"
    assert normalize_prompt("红色，圆形。") == "红色 圆形"
    assert tok.encode("A RED circle.") == tok.encode("a red circle")
    with pytest.raises(PromptError, match="empty"):
        tok.encode(" ?! ")
    with pytest.raises(PromptError, match=f"^prompt is 100 tokens long; the limit is {tok.context} tokens$"):
        tok.encode("red " * 100)  # never silently cut; DALLE-pytorch's tokenizer words it the same
