"""tokenize: prompt -> text token ids, with the request's sampling parameters resolved."""
from __future__ import annotations

from dataclasses import dataclass

from tessera.ops.messages import GenerateParams, Sampling, TokenizedPrompt
from tessera.ops.models.tokenizer import PromptError
from tessera.ops.shapes.vocabulary import unknown_words
from tessera.ops.shared import bundle_for
from tessera.server.engine import InvalidInput, Op


class TokenizeOp(Op):
    uses_device = False  # a Rust tokenizer on one core: no need to wait for the model's turn

    @dataclass
    class Settings:
        model_dir: str | None = None  # None: the bundled model

    def setup(self, device: str) -> None:
        # Tokenizing is CPU work whatever device the models use.
        self.bundle = bundle_for(self.settings.model_dir, "cpu")

    def process(self, rows: list[GenerateParams]) -> list[TokenizedPrompt | InvalidInput]:
        return [self._one(row) for row in rows]

    def _one(self, row: GenerateParams) -> TokenizedPrompt | InvalidInput:
        try:
            text = self.bundle.tokenizer.encode(row.prompt)
        except PromptError as exc:
            return InvalidInput(str(exc))
        d = self.bundle.sampling
        sampling = Sampling(temperature=row.temperature or d.temperature, top_k=row.top_k or d.top_k,
                            top_p=row.top_p or d.top_p, guidance_scale=row.guidance_scale or d.guidance_scale)
        return TokenizedPrompt(text=text, num_images=row.num_images, num_candidates=row.num_candidates,
                               seed=row.seed, sampling=sampling, preview_every=row.preview_every,
                               # Words no training caption used: the images cannot follow them.
                               unknown_words=unknown_words(row.prompt))
