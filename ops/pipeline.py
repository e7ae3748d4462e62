"""The DALL·E graph's OPs called directly, in process, with no engine and no RPC.

The evaluation command uses it, and the benchmark's `offline` ceiling: the same OPs the
server runs, so the same seeds give the same images.

    pipe = LocalPipeline(model_dir=None, capacity=64)
    images = pipe.generate([{"prompt": "a red circle", "num_images": 1, "num_candidates": 16, "seed": 7}])
"""
from __future__ import annotations

from typing import Any

from tessera.ops.clip_text import ClipTextOp
from tessera.ops.decode import DecodeOp
from tessera.ops.rerank import RerankOp
from tessera.ops.sample import SampleOp
from tessera.ops.tokenize import TokenizeOp
from tessera.server.engine import StepRow


def request_defaults(req: dict[str, Any]) -> dict[str, Any]:
    out = {"num_images": 1, "num_candidates": 0, "seed": 1, "temperature": 0.0, "top_k": 0,
           "top_p": 0.0, "guidance_scale": 0.0, "preview_every": 0, **req}
    out["num_candidates"] = out["num_candidates"] or out["num_images"]
    return out


class LocalPipeline:
    def __init__(self, model_dir: str | None = None, device: str = "cpu", capacity: int = 64, **settings: Any):
        """`settings` go to every OP as a server's would (`half`; the sampler's `decode_mode`)."""
        settings = {"model_dir": model_dir, **settings}
        self.tokenize, self.sample, self.decode = TokenizeOp(**settings), SampleOp(**settings), DecodeOp(**settings)
        self.clip_text, self.rerank = ClipTextOp(**settings), RerankOp(**settings)
        self.sample.capacity = capacity
        for op in (self.tokenize, self.sample, self.decode, self.clip_text, self.rerank):
            op.setup(device)
        self.bundle = self.sample.bundle

    def sample_rows(self, rows: list[dict]) -> list[dict]:
        """Run sampler rows through the stepping OP at its full batch; results in row order."""
        pending = list(enumerate(rows))
        out: dict[int, dict] = {}
        while pending or self.sample.active:
            room = self.sample.capacity - self.sample.active
            admit, pending = pending[:room], pending[room:]
            if admit:
                self.sample.admit([StepRow(i, r) for i, r in admit])
            out.update(self.sample.step().finished)
        return [out[i] for i in range(len(rows))]

    def generate(self, requests: list[dict[str, Any]]) -> list[list[dict]]:
        """Each request's best `num_images` images (PNG, score, seed), best first."""
        if not requests:
            return []
        toks = self.tokenize.process([request_defaults(r) for r in requests])
        for t in toks:
            if isinstance(t, BaseException):
                raise t
        rows, owners = [], []
        for i, t in enumerate(toks):
            split = self.sample.split(t)
            rows += split
            owners += [i] * len(split)
        sampled = self.sample_rows(rows)
        decoded = self.decode.process(sampled)
        texts = self.clip_text.process(toks)
        per_request = [[d for d, o in zip(decoded, owners) if o == i] for i in range(len(toks))]
        ranked = self.rerank.process([{"decode": d, "clip_text": c} for d, c in zip(per_request, texts)])
        return [r["images"] for r in ranked]
