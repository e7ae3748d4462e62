"""A DALLE-pytorch checkpoint served as its user serves it: `model.path` (or `--model`) names
train_dalle.py's .pt, the CLIP BPE of an installed dalle_pytorch is the tokenizer, and the
answers are checked against DALLE-pytorch's own greedy `generate_images` through its VAE."""
from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.bench.checkpoints import save_checkpoint
from tessera.bench.references import import_dalle_pytorch, import_open_clip
from tessera.clients import TesseraError
from tests.ops.families.dalle_pytorch.conftest import Payload, build_dalle, save_image_normalized
from tessera.server.config import AppConfig
from tests.server.rpc.conftest import app_config, raw_config, serving

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a red circle on a blue background"
CLIP_ARCH = "tessera-serving-clip-test"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random-weight DALLE with CLIP's 49,408 text tokens (so the installed BPE fits), shift
    tokens and rotary on (DALLE's class defaults), in train_dalle.py's layout."""
    dalle, hparams, vae_params = build_dalle(16, 2, num_text_tokens=49408, attn_types=("full", "axial_row"))
    path = save_checkpoint(tmp_path_factory.mktemp("dalle") / "tiny-dalle.pt", dalle, hparams, vae_params)
    return path, dalle, hparams


def greedy_reference(dalle, hparams, prompt: str) -> np.ndarray:
    """DALLE-pytorch's greedy image (filter_thres 1.0 keeps one token) saved as generate.py saves it."""
    import_dalle_pytorch()
    from dalle_pytorch.tokenizer import SimpleTokenizer
    text = SimpleTokenizer().tokenize([prompt], hparams["text_seq_len"])
    with torch.no_grad():
        image = dalle.generate_images(text, filter_thres=1.0)[0]
    return save_image_normalized(image).numpy()


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def float32(path) -> AppConfig:
    """Served in float32, where Tessera reproduces DALLE-pytorch's own images (`model.dtype`)."""
    raw = raw_config(path)
    raw["model"] = {"path": raw.pop("model_dir"), "dtype": "float32"}
    return AppConfig.from_dict(raw)


async def test_greedy_images_equal_dalle_pytorchs_own_and_the_server_says_what_it_serves(checkpoint):
    path, dalle, hparams = checkpoint
    async with serving(float32(path)) as (server, client):
        info = await client.info()
        assert set(info.precision.values()) == {"float32"}
        assert (info.model_kind, info.image_width, info.text_context, info.image_tokens) == ("dalle-pytorch", 16, 8, 16)
        assert info.tokenizer.startswith("CLIP BPE") and not info.rerank and info.reranker == ""
        assert not any(info.vocabulary.values())  # an open vocabulary lists no words
        assert int(info.details["top_k"]) == info.defaults["top_k"] == 24  # generate.py's 0.9, capped at 24 codes
        gen = await client.generate(PROMPT, num_images=2, num_candidates=2, top_k=1, seed=5)
    expected = greedy_reference(dalle, hparams, PROMPT)
    assert not gen.reranked and gen.unknown_words == []
    assert [im.clip_score for im in gen.images] == [0.0, 0.0]
    assert [im.candidate_index for im in gen.images] == [0, 1]  # sampling order
    for im in gen.images:
        assert np.abs(pixels(im.png).astype(int) - expected.astype(int)).max() <= 1


async def test_tessera_info_says_the_family_tokenizer_and_that_nothing_reranks(checkpoint, capsys):
    from tessera.clients.cli import main
    path, _, _ = checkpoint
    async with serving(app_config(path)) as (server, _):
        code = await asyncio.to_thread(main, ["info", "--server", f"127.0.0.1:{server.port}"])
    out = capsys.readouterr().out
    assert code == 0 and "tiny-dalle (dalle-pytorch)" in out and "CLIP BPE (49408 tokens)" in out
    assert "rerank     off" in out and "vocabulary open" in out and "colors" not in out
    from tessera.server.engine.platforms import compute_for
    auto = str(compute_for("cpu").dtype("auto", "dalle-pytorch")).removeprefix("torch.")  # bfloat16 here
    assert f"sample {auto}" in next(ln for ln in out.splitlines() if ln.startswith("precision  "))


async def test_seeds_guidance_and_batching_work_as_for_the_bundled_model(checkpoint):
    path, _, _ = checkpoint
    async with serving(app_config(path)) as (server, client):
        alone = await client.generate(PROMPT, seed=11, guidance_scale=3.0)
        together = await asyncio.gather(
            client.generate(PROMPT, seed=11, guidance_scale=3.0),
            *(client.generate(f"a {c} square", seed=20 + i, num_candidates=3) for i, c in enumerate(["green", "blue"])))
        unguided = await client.generate(PROMPT, seed=11)
    assert together[0].images[0].png == alone.images[0].png  # same seed, same bytes, whatever shares the steps
    assert unguided.images[0].png != alone.images[0].png     # the null-prompt twin changed the logits


async def test_an_over_long_prompt_is_invalid_argument(checkpoint):
    path, _, _ = checkpoint
    async with serving(app_config(path)) as (server, client):
        # the bundled model's wording (tests/server/rpc/test_errors.py): one for every family
        with pytest.raises(TesseraError, match=r"INVALID_ARGUMENT.*prompt is \d+ tokens long; the limit is 8 tokens"):
            await client.generate("a red circle " * 10)
        assert (await client.generate(PROMPT, seed=3)).images  # and the server serves on


async def test_an_openclip_checkpoint_reranks(checkpoint, tmp_path):
    open_clip = import_open_clip()
    cfg = tmp_path / f"{CLIP_ARCH}.json"
    cfg.write_text(json.dumps({
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    clip_path = tmp_path / "clip.bin"
    torch.save(open_clip.create_model(CLIP_ARCH).state_dict(), clip_path)
    path, _, _ = checkpoint
    raw = raw_config(path)  # the model section as a user writes it
    raw.pop("model_dir")
    raw["model"] = {"path": str(path), "clip": f"{CLIP_ARCH}:{clip_path}"}
    async with serving(AppConfig.from_dict(raw)) as (server, client):
        info = await client.info()
        gen = await client.generate(PROMPT, num_images=2, num_candidates=6, seed=9)
    assert info.rerank and info.reranker == f"OpenCLIP {CLIP_ARCH}"
    scores = [im.clip_score for im in gen.images]
    assert gen.reranked and scores == sorted(scores, reverse=True) and scores[0] != 0.0


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tessera.server.cli", "serve", "--port", "0", "--http-port", "-1",
                           "--metrics-port", "-1", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_serve_refuses_a_checkpoint_that_runs_code_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"hparams": {}, "weights": Payload(marker)}, evil)
    proc = serve("--model", str(evil))
    assert proc.returncode == 2, proc.stderr
    assert "cannot load the model" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_serve_names_a_path_that_is_no_model(tmp_path):
    proc = serve("--model", str(tmp_path / "nope.pt"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = serve("--model", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "dalle_bart_mega" in proc.stderr


def _vqgan_checkpoint(path: Path, tmp_path: Path) -> Path:
    ckpt = torch.load(path, weights_only=True)
    ckpt["vae_class_name"], ckpt["vae_params"] = "VQGanVAE", None  # as train_dalle.py saves a VQGAN run
    out = tmp_path / "vqgan-dalle.pt"
    torch.save(ckpt, out)
    return out


@pytest.mark.parametrize("case, expected", [
    ("missing BPE", "cannot read the BPE file"),
    ("bad tokenizers JSON", "not a readable tokenizers JSON"),
    ("not BPE merges", "not a BPE merges file"),
    ("VQGanVAE", "VQGanVAE"),
    ("random bytes", "is not a PyTorch checkpoint"),
    ("gzipped text", "is not a PyTorch checkpoint: it is a gzip file"),
])
def test_every_model_refusal_is_one_line_and_exit_2(checkpoint, tmp_path, case, expected):
    # Through the real command, as a user meets it: one line, exit 2, never an abort (134)
    # from a loader thread still running when the process exits.
    import gzip
    path, _, _ = checkpoint
    args = {"missing BPE": lambda: ["--model", str(path), "--bpe-path", str(tmp_path / "nope.txt.gz")],
            "bad tokenizers JSON": lambda: ["--model", str(path), "--bpe-path", _write(tmp_path / "t.json", b'{"bad": ')],
            "not BPE merges": lambda: ["--model", str(path), "--bpe-path", _write(tmp_path / "notbpe.txt", b"hello\n")],
            "VQGanVAE": lambda: ["--model", str(_vqgan_checkpoint(path, tmp_path))],
            "random bytes": lambda: ["--model", _write(tmp_path / "junk.pt", bytes(range(3, 256)) * 19)],
            "gzipped text": lambda: ["--model", _write(tmp_path / "text.pt", gzip.compress(b"a note\n"))]}[case]()
    proc = serve(*args)
    assert proc.returncode == 2, proc.stderr
    # the refusal is one line (the log's own INFO records may come before it)
    lines = [line for line in proc.stderr.strip().splitlines() if not re.match(r"\d{4}-\d\d-\d\d .* INFO ", line)]
    assert len(lines) == 1 and lines[0].startswith("tessera serve: cannot load the model: ") and expected in lines[0]
    assert "refusing to run code" not in lines[0]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)
