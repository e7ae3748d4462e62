"""tokenize: prompt -> text token ids, with the request's sampling parameters resolved."""
from __future__ import annotations

from typing import Any

from tessera.ops.models.tokenizer import PromptError
from tessera.ops.shapes.vocabulary import unknown_words
from tessera.ops.shared import bundle_for
from tessera.server.engine import InvalidInput, Op


class TokenizeOp(Op):
    uses_device = False  # a Rust tokenizer on one core: no need to wait for the model's turn

    def setup(self, device: str) -> None:
        # Tokenizing is CPU work whatever device the models use.
        self.bundle = bundle_for(self.settings.get("model_dir"), "cpu")

    def process(self, rows: list[dict[str, Any]]) -> list[Any]:
        return [self._one(row) for row in rows]

    def _one(self, row: dict[str, Any]) -> Any:
        try:
            text = self.bundle.tokenizer.encode(row["prompt"])
        except PromptError as exc:
            return InvalidInput(str(exc))
        d = self.bundle.sampling
        return {
            **row,
            "text": text,
            # Words no training caption used: the images cannot follow them.
            "unknown_words": unknown_words(row["prompt"]),
            "temperature": row.get("temperature") or d.temperature,
            "top_k": row.get("top_k") or d.top_k,
            "top_p": row.get("top_p") or d.top_p,
            "guidance_scale": row.get("guidance_scale") or d.guidance_scale,
        }
