"""/v1/embeddings and /v1/models through the whole stack, driven by the official openai client."""

from __future__ import annotations

import base64
import threading

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import MINILM


def test_minilm_vectors_are_384d_unit_length_and_meaningful(openai_client):
    response = openai_client.embeddings.create(
        model=MINILM,
        input=[
            "A man is eating a piece of bread.",
            "Someone eats some bread.",
            "The stock market fell sharply on Monday.",
        ],
        encoding_format="float",
    )
    vectors = np.array([d.embedding for d in response.data])
    assert vectors.shape == (3, 384)
    assert [d.index for d in response.data] == [0, 1, 2]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert paraphrase > unrelated + 0.3
    assert response.model == MINILM


def test_usage_counts_real_tokens(openai_client, minilm_dir):
    from transformers import AutoTokenizer

    texts = ["hello world", "a somewhat longer sentence about embeddings"]
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir, local_files_only=True)
    expected = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    usage = openai_client.embeddings.create(model=MINILM, input=texts).usage
    assert usage.prompt_tokens == expected
    assert usage.total_tokens == expected


def test_base64_decodes_to_the_float_vector(openai_client, stack):
    text = "Base64 and float must agree."
    as_float = openai_client.embeddings.create(model=MINILM, input=text, encoding_format="float")
    raw = httpx.post(
        f"{stack.v1}/embeddings", json={"model": MINILM, "input": text, "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.array(as_float.data[0].embedding, dtype=np.float32))
    # The openai client's default (base64 on the wire, decoded client-side) gives the same numbers.
    default = openai_client.embeddings.create(model=MINILM, input=text)
    np.testing.assert_array_equal(np.array(default.data[0].embedding, dtype=np.float32), decoded)


def test_dimensions_truncates_and_renormalises_on_a_matryoshka_model(openai_client):
    """tiny-qwen-last declares matryoshka_dimensions [8, 16, 32] in the test catalog."""
    text = "Matryoshka truncation keeps the leading dimensions."
    model = "tiny-qwen-last"
    full = np.array(openai_client.embeddings.create(model=model, input=text).data[0].embedding)
    for size in (8, 12):  # a trained size, and one between two of them
        short = np.array(
            openai_client.embeddings.create(model=model, input=text, dimensions=size)
            .data[0]
            .embedding
        )
        assert short.shape == (size,)
        np.testing.assert_allclose(np.linalg.norm(short), 1.0, atol=1e-5)
        np.testing.assert_allclose(short, full[:size] / np.linalg.norm(full[:size]), atol=1e-5)


def test_dimensions_is_a_400_where_the_model_was_not_trained_for_it(openai_client, stack):
    """MiniLM is not Matryoshka-trained: a truncated vector would be noise, so 400 (its own
    size is fine); below a Matryoshka model's smallest trained size is a 400 too."""
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.embeddings.create(model=MINILM, input="x", dimensions=64)
    assert caught.value.body["param"] == "dimensions"
    assert "Matryoshka" in caught.value.body["message"]
    same = openai_client.embeddings.create(model=MINILM, input="x", dimensions=384)
    assert len(same.data[0].embedding) == 384
    response = httpx.post(
        f"{stack.v1}/embeddings", json={"model": "tiny-qwen-last", "input": "x", "dimensions": 4}
    )
    _assert_openai_error(response, 400, "dimensions")


def test_token_arrays_name_langchains_fix(stack):
    response = httpx.post(f"{stack.v1}/embeddings", json={"model": MINILM, "input": [[1, 2, 3]]})
    _assert_openai_error(response, 400, "input", "unsupported_input")
    assert "check_embedding_ctx_length=False" in response.json()["error"]["message"]


def test_every_pooling_mode_through_the_stack_matches_the_handler(openai_client, tiny_embedders):
    from handlers.embedding import HFEmbeddingModel

    texts = ["the quick brown fox", "cats and dogs are popular pets around the world"]
    for model, folder, pooling in [
        ("tiny-bert-cls", tiny_embedders["bert"], "cls"),
        ("tiny-qwen-last", tiny_embedders["qwen2"], "last_token"),
    ]:
        served = openai_client.embeddings.create(model=model, input=texts, encoding_format="float")
        local = HFEmbeddingModel(str(folder), "cpu", pooling=pooling).embed(texts)
        got = np.array([d.embedding for d in served.data], dtype=np.float32)
        np.testing.assert_allclose(got, local, atol=1e-5, err_msg=model)


def test_large_request_is_split_into_batches_and_keeps_order(openai_client):
    texts = [f"sentence number {i} " + "word " * (i % 17) for i in range(300)]
    response = openai_client.embeddings.create(model=MINILM, input=texts)
    single = openai_client.embeddings.create(model=MINILM, input=texts[123])
    assert len(response.data) == 300
    np.testing.assert_allclose(response.data[123].embedding, single.data[0].embedding, atol=1e-5)


def test_models_lists_served_models_with_capabilities(openai_client):
    models = {m.id: m for m in openai_client.models.list().data}
    assert set(models) >= {MINILM, "tiny-bert-cls", "tiny-qwen-last"}
    assert "BAAI/bge-m3" not in models  # in the catalog, but no worker
    minilm = models[MINILM].model_dump()
    assert minilm["owned_by"] == "local"
    assert minilm["dimensions"] == 384
    assert "text-embedding" in minilm["capabilities"]
    # the suite's workers serve float32 (MODEL_DTYPE, tests/conftest.py); `auto` is
    # reported by tests/test_dtype_stack.py
    assert minilm["dtype"] == "float32"
    assert openai_client.models.retrieve(MINILM).id == MINILM


def test_retrieving_a_catalog_model_without_a_worker_is_a_404(openai_client, stack):
    """OpenAI's answer for a model it does not serve; the inference routes answer 503."""
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.models.retrieve("BAAI/bge-m3")
    assert caught.value.body["code"] == "model_not_found"
    assert "no worker" in caught.value.body["message"]
    _assert_openai_error(httpx.get(f"{stack.v1}/models/no/such-model"), 404, "model")


def _assert_openai_error(response: httpx.Response, status: int, param: str | None, code=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["param"] == param
    if code:
        assert body["error"]["code"] == code


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": MINILM, "input": ""}, 400, "input", None),
        ({"model": MINILM, "input": []}, 400, "input", None),
        ({"model": MINILM, "input": ["ok", ""]}, 400, "input", None),
        ({"model": MINILM, "input": ["x"] * 2049}, 400, "input", "too_many_inputs"),
        ({"model": MINILM, "input": "x" * 40000}, 400, "input", "input_too_long"),
        ({"model": MINILM, "input": [[1, 2, 3]]}, 400, "input", "unsupported_input"),
        ({"model": MINILM, "input": [1, "a"]}, 400, "input", None),
        ({"model": MINILM, "input": {"a": 1}}, 400, "input", None),
        ({"model": MINILM}, 400, "input", None),
        ({"input": "x"}, 400, "model", None),
        ({"model": MINILM, "input": "x", "encoding_format": "hex"}, 400, "encoding_format", None),
        ({"model": MINILM, "input": "x", "dimensions": 0}, 400, "dimensions", None),
        ({"model": MINILM, "input": "x", "dimensions": 999}, 400, "dimensions", None),
        ({"model": "no/such-model", "input": "x"}, 404, "model", "model_not_found"),
        ({"model": "BAAI/bge-m3", "input": "x"}, 503, "model", "model_not_loaded"),
    ],
)
def test_bad_requests_get_openai_errors(stack, body, status, param, code):
    _assert_openai_error(httpx.post(f"{stack.v1}/embeddings", json=body), status, param, code)


def test_invalid_json_is_a_400(stack):
    response = httpx.post(
        f"{stack.v1}/embeddings", content=b"{not json", headers={"content-type": "application/json"}
    )
    _assert_openai_error(response, 400, None)


def test_openai_client_raises_typed_errors(openai_client):
    with pytest.raises(openai.NotFoundError):
        openai_client.embeddings.create(model="no/such-model", input="x")
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.embeddings.create(model=MINILM, input="")
    assert caught.value.body["param"] == "input"
    with pytest.raises(openai.InternalServerError) as caught:
        openai_client.embeddings.create(model="BAAI/bge-m3", input="x")
    assert caught.value.status_code == 503


def test_bad_requests_do_not_disturb_a_concurrent_good_request(stack, openai_client):
    texts = [f"a good request text {i}" for i in range(64)]
    expected = openai_client.embeddings.create(model=MINILM, input=texts, encoding_format="float")
    results: dict[str, object] = {}

    def good():
        results["good"] = openai_client.embeddings.create(
            model=MINILM, input=texts, encoding_format="float"
        )

    thread = threading.Thread(target=good)
    thread.start()
    with httpx.Client() as client:
        for body in [{"model": MINILM, "input": ""}, {"model": "nope", "input": "x"}] * 10:
            assert client.post(f"{stack.v1}/embeddings", json=body).status_code in (400, 404)
    thread.join(60)
    got = np.array([d.embedding for d in results["good"].data])
    np.testing.assert_allclose(got, np.array([d.embedding for d in expected.data]), atol=1e-5)


def test_request_id_is_echoed_and_reaches_the_worker(stack, redis_client):
    response = httpx.post(
        f"{stack.v1}/embeddings",
        json={"model": MINILM, "input": "trace me"},
        headers={"X-Request-ID": "req-test-123"},
    )
    assert response.headers["x-request-id"] == "req-test-123"
    job_id = response.headers["x-job-id"]
    assert redis_client.hget(f"inferq:job:{job_id}", "request_id") == b"req-test-123"
    assert "req-test-123" in stack.logs()
    generated = httpx.get(f"{stack.base_url}/health").headers["x-request-id"]
    assert generated.startswith("req_")


def test_health_and_ready(stack):
    assert httpx.get(f"{stack.base_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.base_url}/ready").json()
    assert ready["status"] == "ready"
    assert ready["models"][MINILM] >= 1
