"""load_openclip gives open_clip's own embeddings: a tiny random-weight CLIP registered with
open_clip, saved to a file, loaded through `ARCH:PATH`; the preprocessing done in torch follows
open_clip's transform (PIL bicubic resize of the shortest side, center crop, normalize)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tessera.bench.references import import_open_clip
from tessera.ops.families.base import ModelLoadError, Reranker
from tessera.ops.families.openclip import load_openclip, parse_spec

ARCH = "tessera-tiny-clip-test"
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    open_clip = import_open_clip()
    d = tmp_path_factory.mktemp("clip")
    cfg = d / f"{ARCH}.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH).eval()
    with torch.no_grad():   # make the untrained projections and biases matter
        for name, p in model.named_parameters():
            if "bias" in name or name.endswith("ln_final.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    path = d / "tiny-clip.bin"
    torch.save(model.state_dict(), path)
    return open_clip, model, str(path)


def test_text_and_image_embeddings_match_open_clip(tiny_clip):
    open_clip, model, path = tiny_clip
    ours = load_openclip(f"{ARCH}:{path}", "cpu", torch.float32)
    assert isinstance(ours, Reranker)
    assert ours.name == f"OpenCLIP {ARCH}" and ours.context == 16

    tokenizer = open_clip.get_tokenizer(ARCH)
    prompts = ["a cat on a mat", "an avocado armchair, 3d render", "一只猫 🐱"]
    ids = [ours.tokenize(p) for p in prompts]
    assert ids == tokenizer(prompts).tolist()
    text = ours.encode_text(torch.tensor(ids))
    with torch.no_grad():
        ref = model.encode_text(tokenizer(prompts), normalize=True)
    assert text.dtype == torch.float32 and text.shape == (3, 32)
    torch.testing.assert_close(text, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))

    g = torch.Generator().manual_seed(1)
    for shape in [(2, 32, 32, 3), (2, 64, 64, 3), (1, 40, 56, 3)]:
        pixels = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        image = ours.encode_image(pixels)
        with torch.no_grad():
            ref = model.encode_image(ours.preprocess(pixels), normalize=True)
        assert image.dtype == torch.float32 and image.shape == (shape[0], 32)
        torch.testing.assert_close(image, ref, rtol=0, atol=1e-4)


def test_preprocessing_follows_open_clip_transform(tiny_clip):
    from PIL import Image
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    _, _, path = tiny_clip
    ours = load_openclip(f"{ARCH}:{path}", "cpu", torch.float32)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(2)

    # already the model's size: /255 and normalize only
    pixels = torch.randint(0, 256, (2, 32, 32, 3), generator=g, dtype=torch.uint8)
    expect = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(ours.preprocess(pixels), expect)

    # larger and not square: PIL's bicubic resize of the shortest side to 32, center crop 32
    smooth = torch.nn.functional.interpolate(
        torch.rand(1, 3, 12, 9, generator=g) * 255, size=(80, 60), mode="bilinear")
    pixels = smooth.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    im = Image.fromarray(pixels[0].numpy()).resize((32, int(32 * 80 / 60)), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()
    top = int(round((arr.shape[1] - 32) / 2.0))
    expect = (arr[None, :, top:top + 32, :] / 255 - mean) / std
    got = ours.preprocess(pixels)
    assert got.shape == (1, 3, 32, 32)
    assert (got - expect).mul(std).abs().max().item() <= 2 / 255 + 1e-6


def test_bad_spec_and_missing_file(tiny_clip, tmp_path):
    for spec in ["", "ViT-B-32", ":/some/file.bin", "ViT-B-32:", "hf-hub:org/repo"]:
        with pytest.raises(ModelLoadError, match="ARCH:PATH"):
            load_openclip(spec, "cpu", torch.float32)
    with pytest.raises(ModelLoadError, match="no such file"):
        load_openclip(f"ViT-B-32:{tmp_path / 'absent.bin'}", "cpu", torch.float32)
    # a pretrained tag is not a file either: never downloaded
    with pytest.raises(ModelLoadError, match="no such file"):
        load_openclip("ViT-B-32:openai", "cpu", torch.float32)
    _, _, path = tiny_clip
    with pytest.raises(ModelLoadError, match="not an OpenCLIP architecture"):
        load_openclip(f"No-Such-Arch:{path}", "cpu", torch.float32)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="junk.bin"):
        load_openclip(f"{ARCH}:{junk}", "cpu", torch.float32)
    assert parse_spec("RN50:/a:b/c.pt") == ("RN50", "/a:b/c.pt")


def test_open_clip_not_importable(tiny_clip, monkeypatch):
    import sys
    _, _, path = tiny_clip
    monkeypatch.setitem(sys.modules, "open_clip", None)   # `import open_clip` raises ImportError
    with pytest.raises(ModelLoadError, match="open-clip-torch.*torchvision"):
        load_openclip(f"{ARCH}:{path}", "cpu", torch.float32)
