"""min-dalle's VQGanDetokenizer (the VQGAN decoder of DALL·E Mini, fixed shape), reimplemented
as an ImageDecoder.

Tokens (B, 256) index a 16384 x 256 codebook; a 16 x 16 grid goes through post_quant_conv and
the decoder (conv_in, a middle of two ResNet blocks around an attention block, five up levels
from 512 channels at 16 x 16 to 128 at 256 x 256, GroupNorm(32) and swish throughout) to
(B, 256, 256, 3); pixels are clip(0, 1) * 255 cast to uint8 (truncation), as min-dalle's
generate_image makes them. Parameter names are min-dalle's, so detoker.pt loads as it is.
min-dalle never casts its detokenizer to the model's dtype; in float32 ours runs as min-dalle's
(the parity tests), in bfloat16 channels-last (oneDNN's fast layout for these convolutions:
0.37-0.43 s an image against float32's 1.07 s on 2 cores, docs/performance/precision-2026-12-06/
kernels.txt), within the pixel
contract of docs/models.md. There GroupNorm sums an odd batch in another order than an even
one, so an odd batch is padded to even: an image's pixels never depend on its batch-mates.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

GRID = 16
CODE = 2 ** 8
VOCAB = 2 ** 14


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place where the input is a fresh tensor: at 4 x 128 x 256 x 256 in bf16 a SiLU into a
        # new tensor took 26 ms, in place 6 (an add 27 and 3): 14% of each image's decode, the
        # same bits either way (measured 2026-12-06).
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(x if self.nin_shortcut is None else self.nin_shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head attention over the grid's cells, 512 channels."""

    def __init__(self, channels: int = 512):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, C, H * W).transpose(1, 2)   # (B, HW, C)
        k = self.k(h).reshape(B, C, H * W)                   # (B, C, HW)
        v = self.v(h).reshape(B, C, H * W)
        w = torch.softmax(torch.bmm(q, k) / C ** 0.5, dim=2)  # (B, HW query, HW key)
        h = torch.bmm(v, w.transpose(1, 2)).reshape(B, C, H, W)
        return self.proj_out(h).add_(x)


class MiddleLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.block_1 = ResnetBlock(512, 512)
        self.attn_1 = AttentionBlock()
        self.block_2 = ResnetBlock(512, 512)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpsampleBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, attention: bool, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(c_in, c_out), ResnetBlock(c_out, c_out), ResnetBlock(c_out, c_out)])
        self.attn = nn.ModuleList(AttentionBlock() for _ in range(3)) if attention else None
        self.upsample = Upsample(c_out) if upsample else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if self.attn is not None:
                h = self.attn[j](h)
        return self.upsample(h) if self.upsample is not None else h


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(256, 512, 3, padding=1)
        self.mid = MiddleLayer()
        # up[4] runs first (16 x 16, 512 channels with attention), up[0] last (256 x 256, 128)
        self.up = nn.ModuleList([
            UpsampleBlock(128, 128, False, False),
            UpsampleBlock(256, 128, False, True),
            UpsampleBlock(256, 256, False, True),
            UpsampleBlock(512, 256, False, True),
            UpsampleBlock(512, 512, True, True),
        ])
        self.norm_out = _norm(128)
        self.conv_out = nn.Conv2d(128, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.mid(self.conv_in(z))
        for up in reversed(self.up):
            z = up(z)
        return self.conv_out(F.silu(self.norm_out(z), inplace=True))


class VQGan(nn.Module):
    """ImageDecoder: (B, 256) image tokens -> (B, 256, 256, 3) uint8."""

    image_size = 256
    image_len = GRID * GRID

    def __init__(self, chunk: int = 8):
        super().__init__()
        self.channels_last = False  # build_vqgan: True in a reduced precision
        self.embedding = nn.Embedding(VOCAB, CODE)
        self.post_quant_conv = nn.Conv2d(CODE, CODE, 1)
        self.decoder = Decoder()
        self.chunk = chunk  # images per decoder pass (256 x 256 x 128 activations are large)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 256) long -> (B, 256, 256, 3) float in 0..255 (min-dalle's forward, not seamless)."""
        z = self.embedding(tokens.long()).view(-1, GRID, GRID, CODE).permute(0, 3, 1, 2)
        z = z.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        z = self.decoder(self.post_quant_conv(z))
        return z.float().permute(0, 2, 3, 1).clip(0.0, 1.0) * 255

    @torch.no_grad()
    def pixels(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != self.image_len:
            raise ValueError(f"VQGAN tokens must be (B, {self.image_len}), got {tuple(tokens.shape)}")
        out = [self._decode_even(part) for part in tokens.split(self.chunk)]
        return torch.cat(out) if out else torch.zeros(0, self.image_size, self.image_size, 3, dtype=torch.uint8,
                                                      device=tokens.device)


    def _decode_even(self, tokens: torch.Tensor) -> torch.Tensor:
        """decode as uint8; channels-last, an odd batch runs with a copy of its last image."""
        n = tokens.shape[0]
        if self.channels_last and n % 2:
            tokens = torch.cat([tokens, tokens[-1:]])
        return self.decode(tokens)[:n].to(torch.uint8)


def build_vqgan(sd: dict[str, torch.Tensor], device: str | torch.device,
                dtype: torch.dtype = torch.float32) -> VQGan:
    """The VQGAN in `dtype`: float32 as min-dalle runs it; a reduced precision channels-last."""
    with torch.device("meta"):
        model = VQGan()
    model.load_state_dict({k: t.to(device=device, dtype=dtype, copy=True) for k, t in sd.items()},
                          strict=True, assign=True)
    if dtype != torch.float32:
        model.channels_last = True
        model.decoder.to(memory_format=torch.channels_last)
        model.post_quant_conv.to(memory_format=torch.channels_last)
    return model.eval().requires_grad_(False)
