"""tokenize needs a family's tokenizer and sampling defaults, never its weights: with no other
OP of the process holding the model, it builds it on the meta device (no weight memory kept)."""
from __future__ import annotations

from tessera.bench.checkpoints import save_checkpoint
from tessera.ops.messages import GenerateParams
from tessera.ops.tokenize import TokenizeOp
from tests.ops.families.dalle_pytorch.conftest import build_dalle


def test_tokenize_keeps_no_weights_and_still_resolves_the_models_defaults(tmp_path):
    dalle, hparams, vae_params = build_dalle(16, 2, num_text_tokens=49408)
    path = save_checkpoint(tmp_path / "ckpt.pt", dalle, hparams, vae_params)
    op = TokenizeOp(model={"path": str(path)})
    op.setup("cpu")
    assert {p.device.type for p in op.bundle.transformer.parameters()} == {"meta"}
    [tokenized] = op.process([GenerateParams("a red circle", seed=3)])
    assert tokenized.text[:3] == [320, 736, 7117] and len(tokenized.text) == hparams["text_seq_len"]
    assert tokenized.sampling.top_k == 24  # generate.py's filter_thres 0.9, from the checkpoint's hparams
    assert tokenized.clip_text is None    # no reranker given
