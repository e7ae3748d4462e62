"""What the checkpoint reader refuses, and the sampling defaults the family derives."""
from __future__ import annotations

import pytest
import torch

from tessera.ops.families.base import ModelLoadError, ModelUnsupported
from tessera.ops.families.dalle_pytorch import default_top_k
from tessera.ops.families.dalle_pytorch.checkpoint import parse_hparams, read_checkpoint
from tests.ops.families.dalle_pytorch.conftest import Payload


def test_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"hparams": {}, "weights": {"x": torch.zeros(1)}, "extra": Payload(marker)}, path)
    with pytest.raises(ModelLoadError, match="is not a plain checkpoint: .*refusing to run code from it"):
        read_checkpoint(path)
    assert not marker.exists()


def test_refuses_a_truncated_file(make_checkpoint, tmp_path):
    path, _ = make_checkpoint("whole")
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.pt"):
        read_checkpoint(cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(ModelLoadError, match="junk.pt"):
        read_checkpoint(junk)


@pytest.mark.parametrize("name, content, what", [
    ("random.pt", bytes(range(7, 250)) * 20, "neither a zip file nor a pickle"),
    ("text.pt.gz", None, "it is a gzip file"),
    ("notes.txt", b"hello\n", "neither a zip file nor a pickle"),
    ("empty.pt", b"", "the file is empty"),
])
def test_a_file_that_is_no_pytorch_checkpoint_says_so_not_that_it_runs_code(tmp_path, name, content, what):
    import gzip
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"some text\n") if content is None else content)
    with pytest.raises(ModelLoadError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert f"{name} is not a PyTorch checkpoint: " in message and what in message
    assert "code" not in message  # nothing in it reached for a function to call


def test_refuses_a_legacy_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "legacy.pt"
    with open(path, "wb") as f:  # torch.save's pre-1.6 format: a bare pickle
        torch.save({"weights": Payload(marker)}, f, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelLoadError, match="is not a plain checkpoint: .*GLOBAL.*refusing to run code from it"):
        read_checkpoint(path)
    assert not marker.exists()


def test_refuses_deepspeed_placeholder_and_directory(tmp_path):
    path = tmp_path / "dalle.pt"
    torch.save({"hparams": {}, "vae_params": None, "epoch": 1, "version": "1.6.6", "vae_class_name": "DiscreteVAE",
                "weights": "To get a working standard checkpoint, look into consolidating DeepSpeed checkpoints."},
               path)
    with pytest.raises(ModelUnsupported, match="zero_to_fp32.py.*dalle-ds-cp"):
        read_checkpoint(path)
    ds = tmp_path / "dalle-ds-cp"
    ds.mkdir()
    with pytest.raises(ModelUnsupported, match="DeepSpeed checkpoint directory.*zero_to_fp32"):
        read_checkpoint(ds)


def test_refuses_sparse_attention(make_checkpoint):
    path, _ = make_checkpoint("plain")
    ckpt = read_checkpoint(path)
    ckpt["hparams"]["attn_types"] = ("full", "sparse")
    with pytest.raises(ModelUnsupported, match="sparse attention needs DeepSpeed"):
        parse_hparams(ckpt)


def test_refuses_weights_no_layout_fits(make_checkpoint):
    path, _ = make_checkpoint("broken")
    ckpt = read_checkpoint(path)
    del ckpt["weights"]["image_emb.weight"]  # text_emb but no image_emb: neither separate nor shared
    with pytest.raises(ModelLoadError, match="neither separate nor shared"):
        parse_hparams(ckpt)
    ckpt = read_checkpoint(path)
    ckpt["weights"] = {k: v for k, v in ckpt["weights"].items() if not k.startswith("transformer.layers")}
    with pytest.raises(ModelLoadError, match="no transformer layers"):
        parse_hparams(ckpt)
    ckpt = read_checkpoint(path)
    ckpt["hparams"]["heads"], ckpt["hparams"]["dim_head"] = 3, 16
    with pytest.raises(ModelLoadError, match="heads 3 x dim_head 16"):
        parse_hparams(ckpt)


def test_default_top_k_is_generate_py_filter_thres():
    # generate.py: top_k(logits, thres=0.9) over text + image logits
    assert default_top_k(108 + 24, 24) == 13
    assert default_top_k(10000 + 256 + 8192, 8192) == 1844
    assert default_top_k(5, 3) == 1
    assert default_top_k(100000 + 256 + 512, 512) == 512
