"""The tessera family: the bundled shapes model's layout (a directory with config.json).

Its nn.Modules (transformer, dVAE, CLIP), its tokenizer and its weight loading only, no serving
concerns, beside the other families (dalle_pytorch/, min_dalle/) and filling the same contract
(families/base.py); `load_model` (families/__init__.py) calls `load_model_dir` for it.
"""
from __future__ import annotations

from tessera.ops.families.tessera.clip import CLIP, CLIPConfig
from tessera.ops.families.tessera.dvae import DVAE, DVAEConfig
from tessera.ops.families.tessera.loading import ModelBundle, ModelLoadError, load_model_dir, save_model_dir
from tessera.ops.families.tessera.tokenizer import PromptError, TextTokenizer, normalize_prompt
from tessera.ops.families.tessera.transformer import ImageGPT, KVCache, TransformerConfig

__all__ = [
    "CLIP", "CLIPConfig", "DVAE", "DVAEConfig", "ImageGPT", "KVCache", "TransformerConfig",
    "ModelBundle", "ModelLoadError", "load_model_dir", "save_model_dir",
    "PromptError", "TextTokenizer", "normalize_prompt",
]
