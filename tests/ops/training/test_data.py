"""Training batches: deterministic by (seed, stage, step); the dVAE's loss mask."""
from __future__ import annotations

import torch

from tessera.ops.training import data


def test_batches_are_deterministic_by_seed_stage_and_step():
    a_scenes, a = data.render_batch(data.batch_rng(0, "dvae", 3), 4)
    b_scenes, b = data.render_batch(data.batch_rng(0, "dvae", 3), 4)
    _, c = data.render_batch(data.batch_rng(0, "dvae", 4), 4)
    assert a_scenes == b_scenes and torch.equal(a, b)
    assert not torch.equal(a, c)


def _square_image() -> torch.Tensor:
    image = torch.zeros(1, 3, 16, 16)
    image[:, 0] = 0.2                    # background
    image[:, :, 6:10, 6:10] = 0.9        # a 4 x 4 shape
    return image


def test_foreground_marks_exactly_the_shape():
    mask = data.foreground(_square_image())
    assert mask.shape == (1, 1, 16, 16)
    assert mask.sum() == 16 and mask[0, 0, 6:10, 6:10].all()


def test_foreground_band_grows_the_mask_into_the_background_around_the_shape():
    mask = data.foreground(_square_image(), band_px=2)
    assert mask[0, 0, 4:12, 4:12].all()           # the shape and a 2 px ring round it
    assert mask.sum() == 64                        # and nothing further out
    assert not mask[0, 0, 3].any() and not mask[0, 0, :, 12].any()
