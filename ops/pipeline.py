"""The DALL·E graph's OPs called directly, in process, with no engine and no RPC.

The evaluation command uses it, and the benchmark's `offline` ceiling: the same OPs the
server runs, so the same seeds give the same images.

    pipe = LocalPipeline(model_dir=None, capacity=64)
    [best] = pipe.generate([GenerateParams("a red circle", num_images=1, num_candidates=16, seed=7)])
    best.images[0].png
"""
from __future__ import annotations

from typing import Any

from tessera.ops.clip_text import ClipTextOp
from tessera.ops.decode import DecodeOp
from tessera.ops.messages import (CandidateRow, GenerateParams, RankedImages, RerankInputs, SampledCandidate,
                                  TokenizedPrompt)
from tessera.ops.rerank import RerankOp
from tessera.ops.sample import SampleOp
from tessera.ops.tokenize import TokenizeOp
from tessera.server.engine import StepRow


class LocalPipeline:
    def __init__(self, model_dir: str | None = None, device: str = "cpu", capacity: int = 64,
                 half: bool | str = False, forward_mode: str = "auto", forward_buckets: list[int] | None = None,
                 *, bpe_path: str | None = None, vae_path: str | None = None, clip: str | None = None,
                 **sample_settings: Any):
        """`model_dir` and the files beside it (`bpe_path`, `vae_path`, `clip`: the configuration's
        `model` section) go to every OP, `half` to the model OPs, `forward_mode` and
        `forward_buckets` to decode, clip_text and rerank, and `sample_settings` (`decode_mode`,
        ...) to the sampler, as a server's configuration would give them."""
        files = {"model_dir": model_dir, "bpe_path": bpe_path, "vae_path": vae_path, "clip": clip}
        model = {**files, "half": half}
        forward = {**model, "forward_mode": forward_mode, "forward_buckets": forward_buckets}
        self.tokenize, self.decode = TokenizeOp(**files), DecodeOp(**forward)
        self.sample = SampleOp(**model, **sample_settings)
        self.clip_text, self.rerank = ClipTextOp(**forward), RerankOp(**forward)
        self.sample.capacity = capacity
        for op in (self.tokenize, self.sample, self.decode, self.clip_text, self.rerank):
            op.setup(device)
        self.bundle = self.sample.bundle

    def tokenized(self, requests: list[GenerateParams]) -> list[TokenizedPrompt]:
        """tokenize's output for each request; raises the first prompt's error, if any."""
        toks = self.tokenize.process(requests)
        for t in toks:
            if isinstance(t, BaseException):
                raise t
        return toks

    def sample_rows(self, rows: list[CandidateRow]) -> list[SampledCandidate]:
        """Run sampler rows through the stepping OP at its full batch; results in row order."""
        pending = list(enumerate(rows))
        out: dict[int, SampledCandidate] = {}
        while pending or self.sample.active:
            room = self.sample.capacity - self.sample.active
            admit, pending = pending[:room], pending[room:]
            if admit:
                self.sample.admit([StepRow(i, r) for i, r in admit])
            out.update(self.sample.step().finished)
        return [out[i] for i in range(len(rows))]

    def generate(self, requests: list[GenerateParams]) -> list[RankedImages]:
        """Each request's best `num_images` images (PNG, score, seed), best first."""
        if not requests:
            return []
        toks = self.tokenized(requests)
        rows, owners = [], []
        for i, t in enumerate(toks):
            split = self.sample.split(t)
            rows += split
            owners += [i] * len(split)
        sampled = self.sample_rows(rows)
        decoded = self.decode.process(sampled)
        texts = self.clip_text.process(toks)
        per_request = [[d for d, o in zip(decoded, owners) if o == i] for i in range(len(toks))]
        return self.rerank.process([RerankInputs(images=d, text_embedding=c) for d, c in zip(per_request, texts)])
