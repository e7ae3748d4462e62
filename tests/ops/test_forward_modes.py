"""decode, clip_text and rerank with their model calls bucketed (forward_mode): the same
images, candidates and scores as eager; a capture that fails in auto mode leaves an OP eager."""
from __future__ import annotations

import logging

import pytest
import torch

from tessera.ops.clip_text import ClipTextOp
from tessera.ops.decode import DecodeOp
from tessera.ops.messages import GenerateParams
from tessera.server.engine.platforms import compute_for
from tessera.server.engine.platforms.buckets import Bucketed
from tessera.server.engine.platforms.cuda import CudaCompute
from tessera.ops.pipeline import LocalPipeline
from tessera.server.config import served_graph
from tessera.server.engine import ConfigError

# 3 prompts and 11 images: clip_text pads 3 rows up to 4, decode and rerank 11 up to 16.
PROMPTS = [GenerateParams(f"a red circle {i}", seed=i, num_candidates=4) for i in range(2)] + [
    GenerateParams("a big blue square", seed=9, num_candidates=3)]


def test_bucketed_ops_return_the_eager_images_and_choices(tiny_model_dir):
    graph = served_graph(model_dir=str(tiny_model_dir))
    eager = LocalPipeline(graph, capacity=16)
    padded = LocalPipeline(graph, capacity=16, forward_mode="padded", forward_buckets=[4, 16])
    assert all(isinstance(fn, Bucketed) for fn in (padded.decode._decode, padded.clip_text._encode,
                                                   padded.rerank._encode))
    assert eager.decode.settings.forward_mode == "auto" and not isinstance(eager.decode._decode, Bucketed)
    for a, b in zip(eager.generate(PROMPTS), padded.generate(PROMPTS), strict=True):
        assert [(i.png, i.candidate_index) for i in a.images] == [(i.png, i.candidate_index) for i in b.images]
        # A padded batch may round a score's last bits differently; never more.
        assert [i.clip_score for i in a.images] == pytest.approx([i.clip_score for i in b.images], abs=1e-6)


def test_a_failed_capture_in_auto_mode_leaves_the_op_eager(monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("capture refused")
    monkeypatch.setattr(CudaCompute, "bucketed", refuse)
    op = ClipTextOp()
    op.device, op.compute = "cuda:0", compute_for("cuda:0")  # auto: the GPU's platform captures
    fn = torch.neg
    with caplog.at_level(logging.WARNING, logger="tessera.ops"):
        assert op.forward(fn, [torch.zeros(1, 2)]) is fn
    assert "ClipTextOp: cuda_graph capture failed, running eagerly" in caplog.text
    op = ClipTextOp(forward_mode="padded")  # asked for by name: the failure is the OP's error
    op.device, op.compute = "cuda:0", compute_for("cuda:0")
    with pytest.raises(RuntimeError, match="capture refused"):
        op.forward(fn, [torch.zeros(1, 2)])


def test_cuda_graph_asked_for_on_a_cpu_is_refused_naming_the_device(tiny_model_dir):
    op = DecodeOp(model={"path": str(tiny_model_dir)}, forward_mode="cuda_graph")
    with pytest.raises(ValueError, match="model call mode 'cuda_graph' does not run on cpu; it runs off, padded, compile"):
        op.setup("cpu")


def test_bad_forward_settings_are_refused_clearly():
    with pytest.raises(ConfigError, match="forward_mode: must be one of auto, off, padded, cuda_graph; got 'compile'"):
        DecodeOp(forward_mode="compile")
    with pytest.raises(ConfigError, match="forward_buckets: must be positive row counts"):
        DecodeOp(forward_buckets=[])
