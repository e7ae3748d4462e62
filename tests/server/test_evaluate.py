"""The evaluation command writes its report, contact sheet and model card."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from tessera.server.evaluate import BARS, main


@pytest.mark.slow  # the whole evaluation on the tiny model: about 50 s on 2 cores
def test_evaluate_writes_report_sheet_and_card(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "eval"
    assert main(["--model", str(model), "--out", str(out), "--prompts", "3", "--candidates", "2", "--card"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["figures"]) == set(BARS)
    assert all(0 <= report["figures"][k] <= 1 for k in ("top1_all_attributes", "clip_pick_true_caption",
                                                          "dvae_roundtrip_attribute_rate"))
    assert report["english"]["prompts"] == report["chinese"]["prompts"] == 3
    assert Image.open(out / "contact_sheet.png").width > 64
    card = (model / "README.md").read_text()
    assert "dVAE round trip" in card and "| no" in card  # an untrained model misses its bars, and says so
    assert f"Command: `tessera evaluate --model {model} --out runs/eval --card`" in card  # a command that exists
