"""Tiny random-weight DALLE models built with DALLE-pytorch's own classes, saved as train_dalle.py
saves (tessera.bench.checkpoints, which the families bench saves its models with too)."""
from __future__ import annotations

import os

import pytest
import torch

from tessera.bench.checkpoints import save_checkpoint, train_dalle_hparams
from tessera.bench.references import import_dalle_pytorch

TEXT_SEQ_LEN = 8
NUM_TEXT_TOKENS = 100


def build_dalle(image_size: int = 16, vae_layers: int = 2, **kwargs):
    """A DALLE in eval mode with every zero/constant-initialised parameter randomised, and the
    hparams dict train_dalle.py would save for it (kwargs override / add DALLE arguments)."""
    dp = import_dalle_pytorch()
    torch.manual_seed(kwargs.pop("seed", 0))
    vae_params = dict(image_size=image_size, num_layers=vae_layers, num_tokens=24, codebook_dim=16, hidden_dim=8)
    vae = dp.DiscreteVAE(**vae_params)
    hparams = train_dalle_hparams(dict(num_text_tokens=NUM_TEXT_TOKENS, text_seq_len=TEXT_SEQ_LEN, dim=32, depth=2,
                                       heads=2, dim_head=16))
    hparams.update(kwargs)
    dalle_kwargs = dict(hparams)
    dalle = dp.DALLE(vae=vae, **dalle_kwargs)
    with torch.no_grad():
        for name, p in dalle.named_parameters():
            if name.startswith("vae."):
                continue
            if name.endswith("scale"):        # LayerScale: 0.1 everywhere otherwise
                p.uniform_(0.3, 1.5)
            elif name.endswith("bias"):       # zero-initialised
                p.normal_(0, 0.2)
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0, 0.3 if p.dim() > 1 else 1.0)
    return dalle.eval(), hparams, vae_params


@pytest.fixture
def make_checkpoint(tmp_path):
    def make(name="dalle", image_size=16, vae_layers=2, drop_hparams=(), drop_weights=(), **kwargs):
        dalle, hp, vp = build_dalle(image_size, vae_layers, **kwargs)
        path = save_checkpoint(tmp_path / f"{name}.pt", dalle, hp, vp, drop_hparams, drop_weights)
        return path, dalle
    return make


def save_image_normalized(image: torch.Tensor) -> torch.Tensor:
    """torchvision.utils.save_image(image, fp, normalize=True) for one (C, H, W) image, as the
    array it writes: make_grid's norm_range, then mul(255).add_(0.5).clamp_(0, 255) to uint8."""
    img = image.detach().float().clone()
    if img.shape[0] == 1:
        img = torch.cat((img, img, img), 0)
    low, high = float(img.min()), float(img.max())
    img.clamp_(min=low, max=high)
    img.sub_(low).div_(max(high - low, 1e-5))
    return img.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8)


class Payload:
    """A pickle that would create a file when loaded: a checkpoint must never run code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
