"""Discrete VAE: 64 x 64 RGB <-> an 8 x 8 grid of codebook indices.

A VQ-VAE with an EMA codebook (van den Oord et al. 2017; Razavi et al. 2019) and dead
codes revived from the batch. Why 8 x 8 and 1024 codes: 64 image tokens keep both
sampling (64 decode steps) and transformer training affordable on two CPU cores, and
1024 codes leave room for the colour-pair x edge-geometry patches that an 8-pixel patch
of a small shape needs. A Gumbel-softmax dVAE collapsed in an earlier trial here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class DVAEConfig:
    image_size: int = 64
    grid: int = 8           # tokens per side: image_size / 8
    n_codes: int = 1024
    code_dim: int = 32
    width: int = 96         # channels at 16 x 16; halved at 32 x 32, 4/3 at 8 x 8
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        if self.image_size != self.grid * 8:
            raise ValueError(f"grid: {self.grid} x 8 must equal image_size {self.image_size}")
        if self.n_codes < 2 or self.code_dim < 1 or self.width < 8:
            raise ValueError("n_codes, code_dim and width must be positive")


def uint8_pixels(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, on the images' device."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class Quantizer(nn.Module):
    """Nearest-codeword lookup; the codebook follows its assignments by EMA."""

    def __init__(self, n_codes: int, dim: int, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("embed", torch.randn(n_codes, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(n_codes))
        self.register_buffer("embed_sum", self.embed.clone())

    def lookup(self, flat: torch.Tensor) -> torch.Tensor:
        flat = flat.float()
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t()
                + self.embed.pow(2).sum(1))  # (N, n_codes)
        return dist.argmin(1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = z.float()  # distances in full precision even under autocast
        B, D, H, W = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B*H*W, D)
        idx = self.lookup(flat)
        if self.training:
            self._ema_update(flat.detach(), idx)
        zq = self.embed[idx]
        commit = F.mse_loss(flat, zq.detach())
        zq = flat + (zq - flat).detach()  # straight-through
        zq = zq.view(B, H, W, D).permute(0, 3, 1, 2)  # (B, D, H, W)
        return zq, idx.view(B, H, W), commit

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.embed.shape[0]).type(flat.dtype)  # (N, n_codes)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + 1e-5) / (n + self.embed.shape[0] * 1e-5) * n
        self.embed.copy_(self.embed_sum / size.unsqueeze(1))
        # Revive codes nobody uses with random encoder outputs, so the codebook stays whole.
        dead = self.cluster_size < 0.03
        if dead.any():
            picks = flat[torch.randint(0, flat.shape[0], (int(dead.sum()),))]
            self.embed[dead] = picks
            self.embed_sum[dead] = picks
            self.cluster_size[dead] = 1.0


class DVAE(nn.Module):
    # Its pixels are the same at any thread count (tests/server/engine/platforms/test_threads.py).
    thread_invariant = True

    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        h, lo, hi = w // 2, w, w * 4 // 3
        self.encoder = nn.Sequential(
            nn.Conv2d(3, h, 4, stride=2, padding=1),            # (B, h, 32, 32)
            nn.ReLU(), nn.Conv2d(h, lo, 4, stride=2, padding=1),  # (B, lo, 16, 16)
            ResBlock(lo),
            nn.ReLU(), nn.Conv2d(lo, hi, 4, stride=2, padding=1),  # (B, hi, 8, 8)
            ResBlock(hi), ResBlock(hi),
            nn.ReLU(), nn.Conv2d(hi, cfg.code_dim, 1),           # (B, code_dim, 8, 8)
        )
        self.quantizer = Quantizer(cfg.n_codes, cfg.code_dim, cfg.ema_decay)
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.code_dim, hi, 3, padding=1),
            ResBlock(hi), ResBlock(hi),
            nn.ReLU(), nn.ConvTranspose2d(hi, lo, 4, stride=2, padding=1),  # (B, lo, 16, 16)
            ResBlock(lo),
            nn.ReLU(), nn.ConvTranspose2d(lo, h, 4, stride=2, padding=1),   # (B, h, 32, 32)
            ResBlock(h),
            nn.ReLU(), nn.ConvTranspose2d(h, 3, 4, stride=2, padding=1),    # (B, 3, 64, 64)
        )

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def image_len(self) -> int:
        return self.cfg.grid ** 2

    @torch.no_grad()
    def pixels(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, grid * grid) token ids -> (B, 64, 64, 3) uint8 (rounded, as the shapes model saves them)."""
        return uint8_pixels(self.decode(tokens))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images in [0, 1], (B, 3, 64, 64) -> (reconstruction, tokens, commitment loss)."""
        zq, idx, commit = self.quantizer(self.encoder(images * 2 - 1))
        return self.decoder(zq) * 0.5 + 0.5, idx, commit

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) in [0, 1] -> (B, grid * grid) token ids."""
        z = self.encoder(images * 2 - 1)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return self.quantizer.lookup(flat).view(images.shape[0], -1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, grid * grid) token ids -> (B, 3, 64, 64) in [0, 1]."""
        g = self.cfg.grid
        zq = self.quantizer.embed[tokens].view(tokens.shape[0], g, g, -1).permute(0, 3, 1, 2)
        return (self.decoder(zq) * 0.5 + 0.5).clamp(0, 1)
