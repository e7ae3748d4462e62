"""tokenize: prompt -> text token ids, with the request's sampling parameters resolved."""
from __future__ import annotations

from tessera.ops.families import PromptError
from tessera.ops.messages import GenerateParams, Sampling, TokenizedPrompt
from tessera.ops.requests import generate_params
from tessera.ops.shared import ModelFiles, bundle_for, loaded_bundle
from tessera.server.engine import InvalidInput, Op


class TokenizeOp(Op):
    uses_device = False  # a tokenizer on one core: no need to wait for the model's turn
    Settings = ModelFiles
    config_defaults = {"batch_size": 32, "batch_timeout_ms": 1}
    # The front door's request fields -> this OP's input (the graph's first OP maps requests).
    from_request = staticmethod(generate_params)

    def setup(self, device: str) -> None:
        # Tokenizing needs the tokenizer and the sampling defaults, not the weights: the bundle
        # another OP of this process loaded, else the model built on the meta device, which keeps
        # no weight memory (a Mega served on a GPU is not loaded a second time on the CPU).
        spec = self.settings.model
        self.bundle = loaded_bundle(spec) or bundle_for(spec, "meta")

    def process(self, rows: list[GenerateParams]) -> list[TokenizedPrompt | InvalidInput]:
        return [self._one(row) for row in rows]

    def _one(self, row: GenerateParams) -> TokenizedPrompt | InvalidInput:
        tokenizer, clip = self.bundle.tokenizer, self.bundle.clip
        try:
            encoded = tokenizer.encode_prompt(row.prompt)
            clip_text = clip.tokenize(row.prompt) if clip is not None else None
        except PromptError as exc:
            return InvalidInput(str(exc), fields=("prompt",))
        d = self.bundle.sampling
        sampling = Sampling(temperature=row.temperature or d.temperature, top_k=row.top_k or d.top_k,
                            top_p=row.top_p or d.top_p, guidance_scale=row.guidance_scale or d.guidance_scale)
        return TokenizedPrompt(text=encoded.ids, num_images=row.num_images, num_candidates=row.num_candidates,
                               seed=row.seed, sampling=sampling, preview_every=row.preview_every,
                               # Words the model cannot know (a closed vocabulary): the images cannot follow them.
                               unknown_words=tokenizer.unknown_words(row.prompt),
                               clip_text=clip_text, notes=list(encoded.notes))
