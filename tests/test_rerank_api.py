"""/v1/rerank through the stack: exactly the handler's scores, in order; errors; jobs."""

from __future__ import annotations

import time

import httpx
import pytest

from handlers.rerank import HFRerankModel

QUERY = "How many people live in Berlin?"
DOCS = [
    "Berlin has a population of 3,520,031 registered inhabitants.",
    "New York City is famous for the Metropolitan Museum of Art.",
    "Berlin is the capital of Germany.",
    "Cats are small carnivorous mammals.",
]


@pytest.fixture(scope="module")
def rerank_stack(stack):
    stack.start_worker(["minilm-reranker", "tiny-reranker"])
    return stack


def test_scores_equal_the_handler_scores_in_order(rerank_stack, tiny_embedders):
    response = httpx.post(
        f"{rerank_stack.v1}/rerank",
        json={"model": "minilm-reranker", "query": QUERY, "documents": DOCS},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    handler = HFRerankModel(str(tiny_embedders["minilm-cross-encoder"]), "cpu")
    expected = handler.rerank(QUERY, DOCS)
    assert [r["index"] for r in body["results"]] == [r.index for r in expected]
    for got, want in zip(body["results"], expected, strict=True):
        assert got["relevance_score"] == pytest.approx(want.relevance_score, abs=1e-5)
        assert got["document"] == {"text": DOCS[want.index]}
    assert body["model"] == "minilm-reranker"
    assert body["id"].startswith("rerank-")
    assert body["usage"]["total_tokens"] == handler.count_tokens([(QUERY, d) for d in DOCS])


def test_top_n_return_documents_and_object_documents(rerank_stack):
    body = httpx.post(
        f"{rerank_stack.v1}/rerank",
        json={
            "model": "tiny-reranker",
            "query": QUERY,
            "documents": [{"text": d} for d in DOCS],
            "top_n": 2,
            "return_documents": False,
        },
    ).json()
    assert len(body["results"]) == 2
    assert all("document" not in r for r in body["results"])
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_aliases(rerank_stack, path):
    response = httpx.post(
        f"{rerank_stack.base_url}{path}",
        json={"model": "tiny-reranker", "query": "q", "documents": ["a", "b"]},
    )
    assert response.status_code == 200
    assert len(response.json()["results"]) == 2


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "tiny-reranker", "query": "q", "documents": []}, 400, "documents"),
        ({"model": "tiny-reranker", "query": "", "documents": ["a"]}, 400, "query"),
        ({"model": "tiny-reranker", "query": "q", "documents": ["a"] * 1001}, 400, "documents"),
        ({"model": "tiny-reranker", "query": "q", "documents": [1, 2]}, 400, "documents"),
        ({"model": "tiny-reranker", "query": "q", "documents": "a"}, 400, "documents"),
        ({"model": "tiny-reranker", "query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n"),
        ({"model": "tiny-reranker", "documents": ["a"]}, 400, "query"),
        ({"model": "nope", "query": "q", "documents": ["a"]}, 404, "model"),
        (
            {"model": "sentence-transformers/all-MiniLM-L6-v2", "query": "q", "documents": ["a"]},
            400,
            "model",
        ),
        ({"model": "BAAI/bge-reranker-base", "query": "q", "documents": ["a"]}, 503, "model"),
    ],
)
def test_bad_requests(rerank_stack, body, status, param):
    response = httpx.post(f"{rerank_stack.v1}/rerank", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_rerank_as_a_job(rerank_stack):
    body = {"model": "tiny-reranker", "query": QUERY, "documents": DOCS}
    job = httpx.post(
        f"{rerank_stack.v1}/jobs", json={"endpoint": "/v1/rerank", "body": body}
    ).json()
    deadline = time.monotonic() + 60
    while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = httpx.get(f"{rerank_stack.v1}/jobs/{job['id']}", timeout=30).json()
    assert job["status"] == "succeeded", job
    sync = httpx.post(f"{rerank_stack.v1}/rerank", json=body).json()
    assert job["result"]["results"] == sync["results"]


def test_a_query_longer_than_the_model_limit_is_truncated_not_a_500(rerank_stack, tiny_embedders):
    """A query that leaves its documents no token (tiny-reranker: 64 tokens) used to make the
    tokenizer raise ('only_second' truncation cannot cut the query): a 500 for bad input."""
    query = "what is the capital of france " * 20  # 120 words
    documents = ["Paris is the capital of France", "cats and dogs are pets", "x"]
    response = httpx.post(
        f"{rerank_stack.v1}/rerank",
        json={"model": "tiny-reranker", "query": query, "documents": documents},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    handler = HFRerankModel(str(tiny_embedders["cross-encoder"]), "cpu")
    pairs = [(query, d) for d in documents]
    assert handler.token_lengths(pairs) == [handler.max_length] * 3  # cut to the model's limit
    assert body["usage"]["total_tokens"] == 3 * handler.max_length
    expected = handler.rerank(query, documents)
    assert [r["index"] for r in body["results"]] == [r.index for r in expected]
    for got, want in zip(body["results"], expected, strict=True):
        assert got["relevance_score"] == pytest.approx(want.relevance_score, abs=1e-5)
