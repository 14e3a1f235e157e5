"""HFRerankModel on tiny random cross-encoders (one logit and two classes), real loading code."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from handlers.base import Cancelled
from handlers.rerank import HFRerankModel, rank

QUERY = "what is the capital of france"
DOCS = ["Paris is the capital of France", "cats and dogs are pets", "the meeting starts at nine"]


@pytest.fixture(scope="module", params=["one-logit", "two-class"])
def reranker(request, tiny_embedders):
    from tests.tiny.embedding import tiny_cross_encoder_dir

    labels = 1 if request.param == "one-logit" else 2
    return HFRerankModel(str(tiny_cross_encoder_dir(num_labels=labels)), "cpu")


def test_scores_are_probabilities_and_results_are_sorted(reranker):
    results = reranker.rerank(QUERY, DOCS)
    assert sorted(r.index for r in results) == [0, 1, 2]
    scores = [r.relevance_score for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert reranker.rerank(QUERY, DOCS, top_k=2) == results[:2]


def test_batched_scores_equal_one_pair_at_a_time(reranker):
    pairs = [(QUERY, d) for d in DOCS] + [("short", "x"), (QUERY, "word " * 40)]
    batched = reranker.score(pairs)
    single = np.array([reranker.score_batch([pair])[0] for pair in pairs])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_long_documents_are_truncated_to_max_length(reranker):
    long_doc = "the quick brown fox " * 200
    assert reranker.token_lengths([(QUERY, long_doc)]) == [reranker.max_length]
    assert reranker.score([(QUERY, long_doc)]).shape == (1,)
    assert reranker.count_tokens([(QUERY, "x")]) == reranker.token_lengths([(QUERY, "x")])[0]


def test_cancel_event(reranker):
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        reranker.rerank(QUERY, DOCS, cancel_event=event)


def test_rank_breaks_ties_by_document_order():
    results = rank(np.array([0.5, 0.9, 0.5, 0.1], dtype=np.float32))
    assert [r.index for r in results] == [1, 0, 2, 3]
    assert [r.index for r in rank(np.array([0.2, 0.3]), 1)] == [1]


def test_xlm_roberta_pairs_at_the_limit_fit_its_position_table():
    """XLM-R numbers positions from padding_idx + 1: pairs of max_position_embeddings tokens
    ran past its position table (IndexError) where its tokenizer names no limit."""
    from tests.tiny.embedding import tiny_xlmr_dir

    reranker = HFRerankModel(str(tiny_xlmr_dir(num_labels=1)), "cpu")
    assert reranker.max_length == 63  # positions 1..63: from padding_idx (0) + 1
    pairs = [(QUERY, "the quick brown fox " * 100), (QUERY, DOCS[0])]
    assert reranker.token_lengths(pairs)[0] == 63
    batched = reranker.score(pairs)
    single = np.array([reranker.score_batch([pair])[0] for pair in pairs])
    np.testing.assert_allclose(batched, single, atol=1e-5)
