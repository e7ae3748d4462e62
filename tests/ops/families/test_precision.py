"""The quality contract of bfloat16 (docs/models.md, Precision) for every family, on tiny models
built with each family's own classes: teacher-forced over a whole image, the next-token
distribution stays close to float32's, the decoded pixels stay within a few levels, and the
bfloat16 path is the one the CPU serves by default where it has bf16 matmuls."""
from __future__ import annotations

import torch

from tessera.ops.families import ModelSpec, load_model
from tessera.ops.families.quality import pixel_levels, teacher_forced
from tessera.server.engine.platforms import compute_for

# The contract (docs/models.md, Precision). At real shapes bfloat16 measured TV 0.002-0.003 mean and
# top-1 0.97-0.99 (docs/performance/precision-2026-12-06); these tiny models, with large random
# weights and peaked distributions, measure up to TV 0.018 mean: the bars leave room for both.
TV_MEAN, TV_P99, TOP1 = 0.03, 0.08, 0.9
MAX_LEVELS, MEAN_LEVELS = 4, 0.5


def pair(path, **spec):
    """The same files loaded in float32 and in bfloat16, the latter prepared as the CPU serves it."""
    s = ModelSpec(path=str(path), **spec)
    ref, low = load_model(s, "cpu", torch.float32), load_model(s, "cpu", torch.bfloat16)
    for part in (low.transformer, low.dvae):
        compute_for("cpu").prepare(part, torch.bfloat16)
    return ref, low


def check(ref, low, text: torch.Tensor, grids: torch.Tensor):
    steps = teacher_forced(ref.transformer, low.transformer, text)
    assert steps.steps == ref.transformer.image_len
    assert steps.tv_mean <= TV_MEAN and steps.tv_p99 <= TV_P99 and steps.top1 >= TOP1, steps
    px = pixel_levels(ref.dvae, low.dvae, grids)
    assert px.max_levels <= MAX_LEVELS and px.mean_levels <= MEAN_LEVELS, px
    # and it is a reduced precision: the two are not the same computation
    assert steps.kl_mean > 0
    return steps, px


def test_the_bundled_family_in_bfloat16_keeps_the_contract(tiny_model_dir):
    ref, low = pair(tiny_model_dir)
    assert next(low.transformer.parameters()).dtype == torch.bfloat16
    text = torch.tensor([low.tokenizer.encode_prompt(p).ids for p in ("a red circle", "a small blue square")])
    grids = torch.randint(0, ref.transformer.image_vocab, (2, ref.transformer.image_len))
    check(ref, low, text, grids)


def test_dalle_pytorch_in_bfloat16_keeps_the_contract(tmp_path):
    from tessera.bench.checkpoints import save_checkpoint
    from tests.ops.families.dalle_pytorch.conftest import build_dalle
    dalle, hp, vp = build_dalle(32, 3, depth=2, dim=64, num_text_tokens=49408)  # the installed CLIP BPE fits
    ref, low = pair(save_checkpoint(tmp_path / "d.pt", dalle, hp, vp))
    assert next(low.dvae.parameters()).dtype == torch.bfloat16
    text = torch.randint(1, 200, (2, hp["text_seq_len"]))
    grids = torch.randint(0, vp["num_tokens"], (3, ref.transformer.image_len))
    check(ref, low, text, grids)
