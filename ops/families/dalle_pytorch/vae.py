"""DALLE-pytorch's image decoders, reimplemented (decoders only) so serving never imports
dalle_pytorch, dall_e or taming.

  DiscreteVAE         dalle_pytorch.DiscreteVAE: codebook embedding, then its `decoder`
                      Sequential (ConvTranspose2d stride 2 + ReLU per layer, optional ResBlocks
                      after a 1x1 conv, a final 1x1 conv). Module names equal DALLE-pytorch's, so
                      its state dict (`codebook.`, `decoder.`) loads as it is.
  OpenAIDiscreteVAE   OpenAI's dVAE decoder (dall_e/decoder.py) as DALLE-pytorch holds it
                      (`dec.blocks.input`, `dec.blocks.group_N.block_M...`, `dec.blocks.output.conv`);
                      its sizes are read off the weights. decode = one_hot over 8192 codes, dec,
                      unmap_pixels(sigmoid(x[:, :3])).
  VQGanVAE            refused: 1.6.6 saves no taming-transformers config for it.

`pixels` converts as DALLE-pytorch's generate.py saves images, torchvision's
save_image(image, path, normalize=True) one image at a time: scaled by that image's own min and
max to [0, 1], then x * 255 + 0.5 clamped to [0, 255] and cast to uint8.

Note: DALLE-pytorch 1.6.6's DiscreteVAE.decode does not undo `normalization` (only `norm`, on
the encoder side, applies it), so neither does ours; the setting is read and checked only.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from tessera.ops.families.base import ModelLoadError, ModelUnsupported, load_weights_only

OPENAI_VOCAB = 8192
_DISCRETE_VAE_DEFAULTS = dict(image_size=256, num_tokens=512, codebook_dim=512, num_layers=3,
                              num_resnet_blocks=0, hidden_dim=64, channels=3,
                              normalization=((0.5, 0.5, 0.5, 0), (0.5, 0.5, 0.5, 1)))


def save_image_pixels(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float -> (B, H, W, 3) uint8 as save_image(image, normalize=True) writes each
    image (C 1: grey to RGB; C 4: min/max over all four, alpha dropped)."""
    x = images.detach().float()
    b, c = x.shape[:2]
    flat = x.reshape(b, -1)
    lo = flat.amin(dim=1).view(b, 1, 1, 1)
    hi = flat.amax(dim=1).view(b, 1, 1, 1)
    x = torch.minimum(torch.maximum(x, lo), hi)
    x = (x - lo) / (hi - lo).clamp(min=1e-5)
    x = x.mul(255).add_(0.5).clamp_(0, 255)
    if c == 1:
        x = x.expand(b, 3, *x.shape[2:])
    x = x[:, :3].permute(0, 2, 3, 1)
    return x.to(torch.uint8).contiguous()


class _DecoderBase(nn.Module):
    image_size: int
    image_len: int
    num_tokens: int
    num_layers: int
    channels: int

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _grid(self, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, {self.image_len}), got {tuple(tokens.shape)}")
        n = tokens.shape[1]
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} image tokens do not make a square grid")
        return tokens.to(self.device, torch.long), side

    @torch.no_grad()
    def pixels(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, image_len) long -> (B, H, W, 3) uint8 on this module's device."""
        return save_image_pixels(self.decode(tokens))


# -- DALLE-pytorch's DiscreteVAE ----------------------------------------------------------------

class ResBlock(nn.Module):
    def __init__(self, chan: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(chan, chan, 3, padding=1), nn.ReLU(),
            nn.Conv2d(chan, chan, 3, padding=1), nn.ReLU(),
            nn.Conv2d(chan, chan, 1))

    def forward(self, x):
        return self.net(x) + x


class DiscreteVAEDecoder(_DecoderBase):
    def __init__(self, image_size: int = 256, num_tokens: int = 512, codebook_dim: int = 512,
                 num_layers: int = 3, num_resnet_blocks: int = 0, hidden_dim: int = 64,
                 channels: int = 3, normalization=_DISCRETE_VAE_DEFAULTS["normalization"]):
        super().__init__()
        self.image_size = int(image_size)
        self.num_tokens = int(num_tokens)
        self.num_layers = int(num_layers)
        self.channels = int(channels)
        fmap = self.image_size // 2 ** self.num_layers
        self.image_len = fmap * fmap
        self.normalization = None if normalization is None else \
            tuple(tuple(t[:channels]) for t in normalization)
        self.codebook = nn.Embedding(num_tokens, codebook_dim)
        has_res = num_resnet_blocks > 0
        dec_chans = [hidden_dim] * num_layers
        dec_chans = [codebook_dim if not has_res else dec_chans[0], *dec_chans]
        layers: list[nn.Module] = [
            nn.Sequential(nn.ConvTranspose2d(i, o, 4, stride=2, padding=1), nn.ReLU())
            for i, o in zip(dec_chans[:-1], dec_chans[1:])]
        for _ in range(num_resnet_blocks):
            layers.insert(0, ResBlock(dec_chans[1]))
        if has_res:
            layers.insert(0, nn.Conv2d(codebook_dim, dec_chans[1], 1))
        layers.append(nn.Conv2d(dec_chans[-1], channels, 1))
        self.decoder = nn.Sequential(*layers)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """DiscreteVAE.decode: (B, n) -> (B, channels, H, W), the decoder's raw output."""
        tokens, side = self._grid(tokens)
        embeds = self.codebook(tokens)                                 # b (h w) d
        b, n, d = embeds.shape
        embeds = embeds.transpose(1, 2).reshape(b, d, side, side)      # b d h w
        return self.decoder(embeds)


# -- OpenAI's dVAE decoder ----------------------------------------------------------------------

class Conv2d(nn.Module):
    """dall_e.utils.Conv2d: parameters `w`, `b`, 'same' padding (in the OP's precision)."""

    def __init__(self, n_in: int, n_out: int, kw: int):
        super().__init__()
        self.kw = kw
        self.w = nn.Parameter(torch.empty(n_out, n_in, kw, kw))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)


class DecoderBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / (n_layers ** 2)
        self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", Conv2d(n_in, n_hid, 1)),
            ("relu_2", nn.ReLU()), ("conv_2", Conv2d(n_hid, n_hid, 3)),
            ("relu_3", nn.ReLU()), ("conv_3", Conv2d(n_hid, n_hid, 3)),
            ("relu_4", nn.ReLU()), ("conv_4", Conv2d(n_hid, n_out, 3))]))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


class _OpenAIBlocks(nn.Module):
    def __init__(self, n_init: int, n_hid: int, n_blk_per_group: int, output_channels: int,
                 vocab_size: int):
        super().__init__()
        n_layers = 4 * n_blk_per_group
        self.blocks = nn.Sequential(OrderedDict([
            ("input", Conv2d(vocab_size, n_init, 1)),
            *[(f"group_{g + 1}", nn.Sequential(OrderedDict([
                *[(f"block_{i + 1}", DecoderBlock(
                    (n_init if g == 0 else 2 * n_out) if i == 0 else n_out, n_out, n_layers))
                  for i in range(n_blk_per_group)],
                *([("upsample", nn.Upsample(scale_factor=2, mode="nearest"))] if g < 3 else []),
            ]))) for g, n_out in enumerate((8 * n_hid, 4 * n_hid, 2 * n_hid, n_hid))],
            ("output", nn.Sequential(OrderedDict([
                ("relu", nn.ReLU()), ("conv", Conv2d(n_hid, 2 * output_channels, 1))]))),
        ]))

    def from_tokens(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        """blocks(one_hot(tokens)) without building the one-hot: the 1x1 input conv of a
        one-hot is a column lookup."""
        conv = self.blocks.input
        w = conv.w[:, :, 0, 0]                                          # n_init, vocab
        x = F.embedding(tokens, w.t()) + conv.b                         # b n n_init
        b = tokens.shape[0]
        x = x.transpose(1, 2).reshape(b, -1, side, side)
        for name, module in self.blocks.named_children():
            if name != "input":
                x = module(x)
        return x


class OpenAIDecoder(_DecoderBase):
    def __init__(self, n_init: int, n_hid: int, n_blk_per_group: int, output_channels: int = 3,
                 vocab_size: int = OPENAI_VOCAB):
        super().__init__()
        self.image_size = 256
        self.num_layers = 3
        self.num_tokens = vocab_size
        self.channels = 3
        fmap = self.image_size // 2 ** self.num_layers
        self.image_len = fmap * fmap
        self.dec = _OpenAIBlocks(n_init, n_hid, n_blk_per_group, output_channels, vocab_size)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """OpenAIDiscreteVAE.decode: (B, n) -> (B, 3, H, W) in [0, 1]."""
        tokens, side = self._grid(tokens)
        x = self.dec.from_tokens(tokens, side).float()
        x = torch.sigmoid(x[:, :3])
        return torch.clamp((x - 0.1) / (1 - 2 * 0.1), 0, 1)          # unmap_pixels


def _openai_sizes(state: dict[str, torch.Tensor], source: str) -> dict[str, int]:
    key = "dec.blocks.input.w"
    if key not in state:
        raise ModelLoadError(f"{source}: OpenAIDiscreteVAE decoder weights are missing (no {key}; "
                             "the checkpoint must hold the dVAE it was trained with)")
    w = state[key]
    if w.dim() != 4:
        raise ModelLoadError(f"{source}: {key} has shape {tuple(w.shape)}, not a 1x1 conv")
    n_init, vocab = int(w.shape[0]), int(w.shape[1])
    blocks = {k.split(".")[3] for k in state if k.startswith("dec.blocks.group_1.block_")}
    n_blk = len(blocks)
    conv4 = state.get("dec.blocks.group_4.block_1.res_path.conv_4.w")
    out = state.get("dec.blocks.output.conv.w")
    if n_blk == 0 or conv4 is None or out is None:
        missing = "dec.blocks.group_1.block_1" if n_blk == 0 else \
            "dec.blocks.group_4.block_1.res_path.conv_4.w" if conv4 is None else "dec.blocks.output.conv.w"
        raise ModelLoadError(f"{source}: OpenAIDiscreteVAE decoder weights are incomplete (no {missing})")
    return dict(n_init=n_init, vocab_size=vocab, n_blk_per_group=n_blk,
                n_hid=int(conv4.shape[0]), output_channels=int(out.shape[0]) // 2)


# -- loading ------------------------------------------------------------------------------------

def _vae_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE's own keys: a DALLE checkpoint's `vae.`-prefixed ones, or the VAE's state dict."""
    if any(k.startswith("vae.") for k in state):
        return {k[4:]: v for k, v in state.items() if k.startswith("vae.")}
    return dict(state)


def _load(module: nn.Module, state: dict[str, torch.Tensor], prefixes: tuple[str, ...],
          source: str, what: str) -> None:
    own = module.state_dict()
    given = {k: v for k, v in state.items() if k.startswith(prefixes)}
    for key, param in own.items():
        if key not in given:
            raise ModelLoadError(f"{source}: the {what} weights do not fit its configuration: "
                                 f"{key} is missing")
        if tuple(given[key].shape) != tuple(param.shape):
            raise ModelLoadError(f"{source}: the {what} weights do not fit its configuration: "
                                 f"{key} has shape {tuple(given[key].shape)}, expected {tuple(param.shape)}")
    extra = sorted(set(given) - set(own))
    if extra:
        raise ModelLoadError(f"{source}: the {what} weights do not fit its configuration: "
                             f"unexpected tensor {extra[0]}")
    module.load_state_dict({k: given[k].float() for k in own}, strict=True)


def build_vae(vae_class_name: str, vae_params: dict | None, state: dict[str, torch.Tensor],
              source: str):
    """The image decoder of a DALLE-pytorch checkpoint (or train_vae.py file), in eval mode on
    the CPU. `state` holds the VAE's weights, bare or `vae.`-prefixed as in a DALLE state dict."""
    name = vae_class_name or "DiscreteVAE"
    vae_state = _vae_state(state)
    if name == "DiscreteVAE":
        params = dict(_DISCRETE_VAE_DEFAULTS)
        params.update({k: v for k, v in (vae_params or {}).items() if k in _DISCRETE_VAE_DEFAULTS})
        try:
            size, layers = int(params["image_size"]), int(params["num_layers"])
            if size < 1 or size & (size - 1) or layers < 1 or size >> layers < 1:
                raise ValueError(f"image_size {size} with num_layers {layers}")
            if int(params["channels"]) not in (1, 3, 4):
                raise ValueError(f"{params['channels']} channels (1, 3 or 4 make an image)")
            norm = params["normalization"]
            if norm is not None and (len(norm) != 2 or any(len(t) < int(params["channels"]) for t in norm)):
                raise ValueError(f"normalization {norm!r}")
            module = DiscreteVAEDecoder(**params)
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{source}: DiscreteVAE parameters Tessera cannot build: {e}") from e
        _load(module, vae_state, ("codebook.", "decoder."), source, "DiscreteVAE")
    elif name == "OpenAIDiscreteVAE":
        sizes = _openai_sizes(vae_state, source)
        if sizes["vocab_size"] != OPENAI_VOCAB:
            raise ModelLoadError(f"{source}: dec.blocks.input.w takes {sizes['vocab_size']} codes; "
                                 f"OpenAI's dVAE has {OPENAI_VOCAB}")
        if sizes["output_channels"] < 3:
            raise ModelLoadError(f"{source}: dec.blocks.output.conv.w gives "
                                 f"{2 * sizes['output_channels']} channels; at least 6 expected")
        module = OpenAIDecoder(**sizes)
        _load(module, vae_state, ("dec.",), source, "OpenAIDiscreteVAE")
    elif name == "VQGanVAE":
        raise ModelUnsupported(
            f"{source}: a VQGAN image decoder (VQGanVAE) cannot be rebuilt: DALLE-pytorch saves "
            "no taming-transformers config for it (vae_params is None; its ddconfig, n_embed and "
            "embed_dim are missing), so Tessera cannot serve this checkpoint")
    else:
        raise ModelUnsupported(f"{source}: unknown VAE class {name!r} (Tessera serves DiscreteVAE "
                               "and OpenAIDiscreteVAE)")
    return module.eval().requires_grad_(False)


def read_vae_file(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """train_vae.py's {'hparams': vae_params, 'weights': state_dict} file."""
    try:
        obj = load_weights_only(path)
    except FileNotFoundError as e:
        raise ModelLoadError(f"VAE file {path} does not exist") from e
    except Exception as e:  # noqa: BLE001 - unpickling errors of every kind
        raise ModelLoadError(f"cannot load the VAE file {path}: {e}") from e
    if not isinstance(obj, dict) or "hparams" not in obj or "weights" not in obj:
        raise ModelLoadError(f"{path} is not a DALLE-pytorch train_vae.py file "
                             "(a dict with 'hparams' and 'weights')")
    hparams, weights = obj["hparams"], obj["weights"]
    if not isinstance(hparams, dict) or not isinstance(weights, dict) \
            or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelLoadError(f"{path}: 'hparams' must be a dict and 'weights' a state dict")
    return hparams, weights
