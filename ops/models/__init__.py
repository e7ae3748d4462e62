"""The DALL·E models: nn.Modules and weight loading only, no serving concerns."""
from __future__ import annotations

from tessera.ops.models.clip import CLIP, CLIPConfig
from tessera.ops.models.dvae import DVAE, DVAEConfig
from tessera.ops.models.loading import ModelBundle, ModelLoadError, load_model_dir, save_model_dir
from tessera.ops.models.tokenizer import PromptError, TextTokenizer, normalize_prompt
from tessera.ops.models.transformer import ImageGPT, KVCache, TransformerConfig

__all__ = [
    "CLIP", "CLIPConfig", "DVAE", "DVAEConfig", "ImageGPT", "KVCache", "TransformerConfig",
    "ModelBundle", "ModelLoadError", "load_model_dir", "save_model_dir",
    "PromptError", "TextTokenizer", "normalize_prompt",
]
