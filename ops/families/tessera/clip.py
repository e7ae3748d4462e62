"""CLIP: a text encoder and an image encoder trained contrastively on the captions.

score(text, images) is the cosine similarity used to rerank candidates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class CLIPConfig:
    text_vocab: int = 1024
    text_len: int = 32
    d_text: int = 128
    n_layer: int = 2
    n_head: int = 4
    width: int = 32      # image encoder channels at 32 x 32, doubling as it halves
    d_embed: int = 128

    def __post_init__(self) -> None:
        for key in ("text_vocab", "text_len", "d_text", "n_layer", "n_head", "width", "d_embed"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if self.d_text % self.n_head:
            raise ValueError(f"d_text {self.d_text} is not divisible by n_head {self.n_head}")


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig, pad_id: int = 0):
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.tok_emb = nn.Embedding(cfg.text_vocab, cfg.d_text)
        self.pos_emb = nn.Parameter(torch.randn(cfg.text_len, cfg.d_text) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_text, cfg.n_head, 4 * cfg.d_text,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.text_encoder = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.text_proj = nn.Linear(cfg.d_text, cfg.d_embed)
        w = cfg.width
        self.image_encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1), nn.ReLU(),            # (B, w, 32, 32)
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.ReLU(),        # (B, 2w, 16, 16)
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1), nn.ReLU(),    # (B, 4w, 8, 8)
            nn.Conv2d(4 * w, 4 * w, 4, stride=2, padding=1), nn.ReLU(),    # (B, 4w, 4, 4)
            nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.ReLU(),           # keeps where things are
            nn.Linear(256, cfg.d_embed),
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """(B, text_len) ids -> (B, d_embed), unit length."""
        pad = text == self.pad_id
        x = self.tok_emb(text) + self.pos_emb
        x = self.text_encoder(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)  # float() would turn a half model's x to fp32
        x = (x * keep).sum(1) / keep.sum(1).clamp(min=1)  # mean over real tokens
        return F.normalize(self.text_proj(x), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) in [0, 1] -> (B, d_embed), unit length."""
        return F.normalize(self.image_encoder(images * 2 - 1), dim=-1)

    @torch.no_grad()
    def score(self, text: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of one text (1, text_len) with each image -> (B,)."""
        return (self.encode_image(images) @ self.encode_text(text).t()).squeeze(-1)


class ShapesReranker:
    """The bundled CLIP as the families' Reranker (ops/families/base.py): the model's own
    tokenizer for the text, uint8 pixels scaled to [0, 1] for the images."""

    def __init__(self, model: CLIP, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.name = "the shapes CLIP"
        self.context = model.cfg.text_len

    def tokenize(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids).float()

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, d_embed) float32, unit length."""
        dtype = self.model.logit_scale.dtype
        return self.model.encode_image(pixels.permute(0, 3, 1, 2).to(dtype) / 255.0).float()
