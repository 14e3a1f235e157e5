"""A batch part's embeddings and rerank lines (workers/batch/lines.py) through a real batcher
on tiny models: a forward that fails on one line's inputs fails that line alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from handlers.embedding import HFEmbeddingModel
from handlers.rerank import HFRerankModel
from inferq.catalog import ModelEntry
from inferq.errors import ServiceError
from inferq.settings import Settings
from tests.tiny.embedding import tiny_cross_encoder_dir
from workers.batch.lines import EmbeddingLines, RerankLines
from workers.batching import Batcher
from workers.loaded import LoadedModel


class Poisoned:
    """A handler whose forward fails on any pass holding the word "poison" (a custom
    handler's bug on one input); raw inputs reach it (no ``tokenize``)."""

    def __init__(self, handler, forward: str):
        self.handler = handler
        self.family = handler.family
        self.dim = getattr(handler, "dim", None)
        self._forward = getattr(handler, forward)
        self.calls = 0

    def token_lengths(self, inputs):
        return self.handler.token_lengths(inputs)

    def forward(self, inputs):
        self.calls += 1
        if any("poison" in str(item) for item in inputs):
            raise RuntimeError("the forward failed on this input")
        return self._forward(inputs)


def _model(handler: Poisoned, name: str, width: int | None) -> LoadedModel:
    entry = ModelEntry(name=name, hf_repo_id=name, handler="test")
    batcher = Batcher(handler.forward, width=width, batch_tokens=100_000, max_batch_size=64)
    return LoadedModel(entry, handler, 0.0, handler.family, batcher=batcher)


def _run(lines, bodies: list[dict], model: LoadedModel) -> list:
    requests = [lines.prepare(body, model) for body in bodies]
    try:
        return lines.run(requests, model, threading.Event())
    finally:
        model.batcher.stop()


@pytest.fixture(scope="module")
def embedder(tiny_embedders):
    return HFEmbeddingModel(str(tiny_embedders["bert"]), "cpu")


def test_an_embeddings_line_whose_forward_fails_fails_alone(embedder):
    handler = Poisoned(embedder, "embed_batch")
    model = _model(handler, "tiny-embedder", embedder.dim)
    bodies = [
        {"model": "tiny-embedder", "input": ["first line", "its second text"]},
        {"model": "tiny-embedder", "input": ["fine", "poison here"]},
        {"model": "tiny-embedder", "input": "the third line"},
    ]
    outcomes = _run(EmbeddingLines(Settings()), bodies, model)
    assert isinstance(outcomes[1], ServiceError)
    for body, outcome in zip([bodies[0], bodies[2]], [outcomes[0], outcomes[2]], strict=True):
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        got = np.array([row["embedding"] for row in outcome["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, embedder.embed_batch(texts), atol=1e-5)
    assert handler.calls > 1  # the shared call failed, then ran again line by line


def test_a_rerank_line_whose_forward_fails_fails_alone():
    reranker = HFRerankModel(str(tiny_cross_encoder_dir()), "cpu")
    handler = Poisoned(reranker, "score_batch")
    model = _model(handler, "tiny-reranker", None)
    bodies = [
        {"model": "tiny-reranker", "query": "a question", "documents": ["one", "two words"]},
        {"model": "tiny-reranker", "query": "poison", "documents": ["three"]},
    ]
    outcomes = _run(RerankLines(Settings()), bodies, model)
    assert isinstance(outcomes[1], ServiceError)
    want = reranker.score_batch([("a question", "one"), ("a question", "two words")])
    got = {r["index"]: r["relevance_score"] for r in outcomes[0]["results"]}
    assert got == pytest.approx({0: float(want[0]), 1: float(want[1])}, abs=1e-5)
