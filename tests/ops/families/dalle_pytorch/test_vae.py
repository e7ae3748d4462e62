"""Our DALLE-pytorch image decoders give DALLE-pytorch's pixels: its DiscreteVAE.decode and
OpenAI's dVAE decoder (dall_e, wrapped as DALLE-pytorch's OpenAIDiscreteVAE holds it) as the
oracles, each followed by generate.py's save_image(image, normalize=True) conversion."""
from __future__ import annotations

import pytest
import torch

from tessera.bench.references import import_dall_e, import_dalle_pytorch
from tessera.ops.families.base import ImageDecoder, ModelLoadError, ModelUnsupported
from tessera.ops.families.dalle_pytorch.vae import build_vae, read_vae_file
from tests.ops.families.dalle_pytorch.conftest import save_image_normalized


def reference_pixels(images: torch.Tensor) -> torch.Tensor:
    return torch.stack([save_image_normalized(im) for im in images])


def assert_pixels_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.uint8 and ours.shape == ref.shape
    diff = (ours.int() - ref.int()).abs().max().item()
    assert diff <= 1, f"pixels differ by {diff}/255"


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))


TINY = dict(image_size=32, num_tokens=24, codebook_dim=8, num_layers=2, hidden_dim=8)


def _discrete_vae(**overrides):
    dalle_pytorch = import_dalle_pytorch()
    params = {**TINY, **overrides}
    vae = dalle_pytorch.DiscreteVAE(**params).eval()
    _randomize(vae, seed=sum(map(ord, repr(sorted(params.items())))))
    return params, vae


def _tokens(n: int, vocab: int, batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("overrides", [{}, {"num_resnet_blocks": 2}, {"num_layers": 3, "channels": 1}])
def test_discrete_vae_in_train_dalle_layout(overrides):
    params, vae = _discrete_vae(**overrides)
    # train_dalle.py saves dalle.state_dict(): the VAE under `vae.` beside the transformer
    state = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    state["transformer.layers.0.weight"] = torch.zeros(2, 2)
    ours = build_vae("DiscreteVAE", params, state, "dalle.pt")
    assert isinstance(ours, ImageDecoder)
    fmap = params["image_size"] // 2 ** params["num_layers"]
    assert (ours.image_size, ours.image_len, ours.num_tokens, ours.num_layers) == \
        (params["image_size"], fmap * fmap, params["num_tokens"], params["num_layers"])
    tokens = _tokens(ours.image_len, params["num_tokens"])
    with torch.no_grad():
        ref = vae.decode(tokens)
        torch.testing.assert_close(ours.decode(tokens), ref, rtol=1e-5, atol=1e-5)
        pixels = ours.pixels(tokens)
    assert pixels.shape == (3, params["image_size"], params["image_size"], 3)
    assert_pixels_close(pixels, reference_pixels(ref))


def test_discrete_vae_train_vae_file_with_other_normalization(tmp_path):
    # decode never uses normalization in DALLE-pytorch 1.6.6 (only the encoder's norm does):
    # the pixels still match with a non-default one, read back from train_vae.py's file
    norm = ((0.48, 0.45, 0.40), (0.27, 0.26, 0.28))
    params, vae = _discrete_vae(normalization=norm, num_resnet_blocks=1)
    path = tmp_path / "vae.pt"
    torch.save({"hparams": params, "weights": vae.state_dict()}, path)
    hparams, weights = read_vae_file(str(path))
    assert tuple(map(tuple, hparams["normalization"])) == norm
    ours = build_vae("DiscreteVAE", hparams, weights, str(path))
    assert ours.normalization == norm
    tokens = _tokens(ours.image_len, params["num_tokens"], seed=1)
    with torch.no_grad():
        assert_pixels_close(ours.pixels(tokens), reference_pixels(vae.decode(tokens)))


def test_discrete_vae_weights_that_do_not_fit():
    params, vae = _discrete_vae()
    state = vae.state_dict()
    with pytest.raises(ModelLoadError, match=r"dalle\.pt.*decoder\.0\.0\.weight"):
        build_vae("DiscreteVAE", {**params, "hidden_dim": 16}, state, "dalle.pt")
    with pytest.raises(ModelLoadError, match=r"dalle\.pt.*codebook\.weight"):
        build_vae("DiscreteVAE", params, {k: v for k, v in state.items() if k != "codebook.weight"},
                  "dalle.pt")
    with pytest.raises(ModelLoadError, match=r"dalle\.pt.*decoder\.3\.weight"):  # a third layer?
        build_vae("DiscreteVAE", params, {**state, "decoder.3.weight": torch.zeros(1)}, "dalle.pt")


def _openai_decoder(seed: int = 3):
    dall_e = import_dall_e()
    dec = dall_e.Decoder(n_init=8, n_hid=64, n_blk_per_group=1, vocab_size=8192,
                         requires_grad=False).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if name.endswith(".b"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return dall_e, dec


@pytest.mark.parametrize("prefix", ["", "vae."])
def test_openai_dvae_matches_dall_e_decoder(prefix):
    dall_e, dec = _openai_decoder()
    # DALLE-pytorch's OpenAIDiscreteVAE holds the pickled modules as self.enc and self.dec
    state = {f"{prefix}dec.{k}": v for k, v in dec.state_dict().items()}
    state[f"{prefix}enc.blocks.input.w"] = torch.zeros(4, 3, 7, 7)
    ours = build_vae("OpenAIDiscreteVAE", None, state, "dalle-openai.pt")
    assert isinstance(ours, ImageDecoder)
    assert (ours.image_size, ours.image_len, ours.num_tokens, ours.num_layers) == (256, 1024, 8192, 3)
    tokens = _tokens(1024, 8192, batch=2, seed=5)
    with torch.no_grad():
        z = torch.nn.functional.one_hot(tokens.view(2, 32, 32), num_classes=8192)
        z = z.permute(0, 3, 1, 2).float()                     # 'b h w c -> b c h w'
        ref = dall_e.unmap_pixels(torch.sigmoid(dec(z).float()[:, :3]))
        decoded = ours.decode(tokens)
        torch.testing.assert_close(decoded, ref, rtol=1e-4, atol=1e-5)
        pixels = ours.pixels(tokens)
    assert pixels.shape == (2, 256, 256, 3)
    assert_pixels_close(pixels, reference_pixels(ref))


def test_openai_dvae_missing_or_misfit_weights():
    _, dec = _openai_decoder()
    state = {f"dec.{k}": v for k, v in dec.state_dict().items()}
    with pytest.raises(ModelLoadError, match=r"ckpt\.pt.*dec\.blocks\.input\.w"):
        build_vae("OpenAIDiscreteVAE", None, {"enc.blocks.input.w": torch.zeros(1)}, "ckpt.pt")
    bad = dict(state)
    bad["dec.blocks.group_2.block_1.res_path.conv_2.w"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(ModelLoadError, match=r"ckpt\.pt.*group_2\.block_1\.res_path\.conv_2\.w"):
        build_vae("OpenAIDiscreteVAE", None, bad, "ckpt.pt")


def test_vqgan_and_unknown_classes_are_unsupported():
    with pytest.raises(ModelUnsupported, match="VQGAN.*config"):
        build_vae("VQGanVAE", None, {"vae.model.quantize.embedding.weight": torch.zeros(4, 2)}, "vq.pt")
    with pytest.raises(ModelUnsupported, match="SomeOtherVAE"):
        build_vae("SomeOtherVAE", None, {}, "x.pt")


def test_read_vae_file_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="missing.pt"):
        read_vae_file(str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="junk.pt"):
        read_vae_file(str(junk))
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": {}}, wrong)
    with pytest.raises(ModelLoadError, match="wrong.pt.*hparams"):
        read_vae_file(str(wrong))
