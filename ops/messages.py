"""The typed messages the DALL·E OPs hand each other: everything that crosses an OP boundary.

    request ─GenerateParams─► tokenize ─TokenizedPrompt─► sample ─SampledCandidate─► decode ─┐
                                  │          (one CandidateRow per candidate)        DecodedImage
                                  └─TokenizedPrompt─► clip_text ─TextEmbedding──────────────┴─► rerank
                                                                              RerankInputs ─► RankedImages

Plain dataclasses of numbers, strings, bytes, tensors and arrays: they pickle, so an OP runs
unchanged on a thread, in a child process or on a Ray actor on another machine. A typo in a
field name fails where it is written, not three OPs later.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the RPC layer builds GenerateParams without loading torch for it
    import numpy as np
    import torch


@dataclass(frozen=True)
class GenerateParams:
    """One request as the front door validated it; None asks for the model's default."""
    prompt: str
    num_images: int = 1
    num_candidates: int = 0       # 0: as many as num_images
    seed: int = 1                 # candidate 0's seed; the others derive from it
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float | None = None
    preview_every: int = 0        # stream a preview of candidate 0 every N tokens (0: none)

    def __post_init__(self) -> None:
        if not self.num_candidates:
            object.__setattr__(self, "num_candidates", self.num_images)


@dataclass(frozen=True)
class Sampling:
    """Sampling settings with the model's defaults filled in."""
    temperature: float
    top_k: int
    top_p: float
    guidance_scale: float


@dataclass(frozen=True)
class TokenizedPrompt:
    """tokenize's output: the prompt's token ids and the request's resolved parameters."""
    text: list[int]               # (text_len,) token ids, padded
    num_images: int
    num_candidates: int
    seed: int
    sampling: Sampling
    preview_every: int = 0
    unknown_words: list[str] = field(default_factory=list)  # prompt words the model never saw
    clip_text: list[int] | None = None  # the prompt as the reranker reads it; None: no reranker
    notes: list[str] = field(default_factory=list)  # what the response should say (a prompt cut short...)


@dataclass(frozen=True)
class CandidateRow:
    """One candidate for the sampler: a request's prompt with this candidate's own seed."""
    text: list[int]
    seed: int
    candidate_index: int
    sampling: Sampling
    preview_every: int = 0


@dataclass(frozen=True)
class SampledCandidate:
    """sample's output per candidate: its image token grid."""
    tokens: torch.Tensor          # (image_len,) int64
    seed: int
    candidate_index: int


@dataclass(frozen=True)
class DecodedImage:
    """decode's output per candidate: its pixels."""
    pixels: np.ndarray            # (H, W, 3) uint8
    seed: int
    candidate_index: int


@dataclass(frozen=True)
class TextEmbedding:
    """clip_text's output: the prompt's CLIP embedding, with what the answer needs from the
    request (it rides along this branch to rerank, which has no other view of the request)."""
    embedding: torch.Tensor | None  # (d_embed,) float32, unit length; None: the model has no reranker
    num_images: int               # how many of the best candidates the request keeps
    unknown_words: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RerankInputs:
    """rerank's two inputs, by its own names (the YAML maps each to the OP feeding it)."""
    images: list[DecodedImage]    # every candidate of one request
    text_embedding: TextEmbedding


@dataclass(frozen=True)
class RankedImage:
    png: bytes
    clip_score: float
    seed: int
    candidate_index: int
    width: int
    height: int


@dataclass(frozen=True)
class RankedImages:
    """rerank's output, the request's answer: the best `num_images`, best first (in sampling
    order, with no score, when the model has no reranker)."""
    images: list[RankedImage]
    unknown_words: list[str] = field(default_factory=list)  # the prompt's words the model does not know
    reranked: bool = True
    notes: list[str] = field(default_factory=list)
