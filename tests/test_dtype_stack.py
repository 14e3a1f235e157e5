"""The dtype `auto` picks, served end to end: what /v1/models reports, and vectors and rerank
scores within bf16's error of the float32 references (the rest of the suite runs float32;
see tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import openai
import pytest
import torch

from handlers.dtype import auto_dtype
from handlers.embedding import HFEmbeddingModel
from handlers.rerank import HFRerankModel
from tests.dtype_support import DOCUMENTS, QUERY
from tests.dtype_support import SENTENCES as TEXTS


@pytest.fixture(scope="module")
def auto_stack(stack):
    stack.start_worker(["minilm-auto", "minilm-reranker-auto"])
    return stack


def test_models_report_the_dtype_auto_picks_on_this_cpu(auto_stack):
    expected = str(auto_dtype("cpu")).removeprefix("torch.")
    served = {m.id: m for m in openai.OpenAI(base_url=auto_stack.v1, api_key="x").models.list()}
    assert served["minilm-auto"].model_extra["dtype"] == expected
    assert served["minilm-reranker-auto"].model_extra["dtype"] == expected


def test_auto_embeddings_match_float32_references(auto_stack, minilm_dir):
    client = openai.OpenAI(base_url=auto_stack.v1, api_key="x")
    got = np.array(
        [d.embedding for d in client.embeddings.create(model="minilm-auto", input=TEXTS).data]
    )
    reference = HFEmbeddingModel(str(minilm_dir), "cpu", torch_dtype="float32").embed(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = (got * reference).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    if auto_dtype("cpu") == torch.bfloat16:
        assert not np.allclose(got, reference, atol=1e-6)  # it did compute in bf16


def test_auto_rerank_keeps_the_float32_order(auto_stack, tiny_embedders):
    import httpx

    body = httpx.post(
        f"{auto_stack.v1}/rerank",
        json={"model": "minilm-reranker-auto", "query": QUERY, "documents": DOCUMENTS},
        timeout=60,
    ).json()
    fp32 = HFRerankModel(str(tiny_embedders["minilm-cross-encoder"]), "cpu", torch_dtype="float32")
    reference = fp32.score([(QUERY, d) for d in DOCUMENTS])
    scores = {r["index"]: r["relevance_score"] for r in body["results"]}
    got = np.array([scores[i] for i in range(len(DOCUMENTS))])
    np.testing.assert_allclose(got, reference, atol=0.02)
    # the head is random, so only pairs further apart than bf16's error have an order to keep
    for i in range(len(DOCUMENTS)):
        for j in range(len(DOCUMENTS)):
            if reference[i] - reference[j] > 0.02:
                assert got[i] > got[j], (i, j, got, reference)
