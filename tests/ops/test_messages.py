"""What crosses an OP boundary is a typed message that survives pickling (a process or Ray hop)."""
from __future__ import annotations

import pickle

from tessera.ops.messages import (DecodedImage, GenerateParams, RankedImages, RerankInputs, SampledCandidate,
                                  TextEmbedding, TokenizedPrompt)
from tessera.ops.pipeline import LocalPipeline
from tessera.server.config import served_graph


def hop(value):
    return pickle.loads(pickle.dumps(value))


def test_every_message_crosses_a_pickle_hop_and_gives_the_same_images(tiny_model_dir):
    pipe = LocalPipeline(served_graph(model_dir=str(tiny_model_dir)), capacity=8)
    request = GenerateParams("a red circle", num_images=2, num_candidates=3, seed=9, temperature=0.9)
    [direct] = pipe.generate([request])

    [tok] = pipe.tokenize.process([hop(request)])
    assert isinstance(tok, TokenizedPrompt) and tok.num_candidates == 3
    sampled = pipe.sample_rows([hop(row) for row in pipe.sample.split(hop(tok))])
    assert all(isinstance(s, SampledCandidate) for s in sampled)
    decoded = pipe.decode.process([hop(s) for s in sampled])
    assert all(isinstance(d, DecodedImage) for d in decoded)
    [text] = pipe.clip_text.process([hop(tok)])
    assert isinstance(text, TextEmbedding) and text.num_images == 2
    [ranked] = pipe.rerank.process([hop(RerankInputs(images=hop(decoded), text_embedding=hop(text)))])
    ranked = hop(ranked)

    assert isinstance(ranked, RankedImages)
    assert [im.png for im in ranked.images] == [im.png for im in direct.images]
    assert [(im.seed, im.candidate_index) for im in ranked.images] == [
        (im.seed, im.candidate_index) for im in direct.images]


def test_request_defaults_candidates_to_images():
    assert GenerateParams("x", num_images=3).num_candidates == 3
    assert GenerateParams("x", num_images=3, num_candidates=5).num_candidates == 5
