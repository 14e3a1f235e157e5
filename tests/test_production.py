"""Auth and tenant isolation, backpressure, metrics and structured logs, on real processes."""

from __future__ import annotations

import io
import json
import re

import httpx
import openai
import pytest

from inferq import protocol as p
from tests.conftest import MINILM, free_port

KEY_A, KEY_B = "sk-test-a-0123456789", "sk-test-b-9876543210"


@pytest.fixture(scope="module")
def secured(stack) -> str:
    return stack.start_api(API_KEYS=f"{KEY_A},{KEY_B}")


def _client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


V1_ROUTES = [
    ("GET", "/v1/models"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/rerank"),
    ("POST", "/rerank"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/job_x"),
    ("POST", "/v1/jobs/job_x/cancel"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files"),
    ("GET", "/v1/files/file-x/content"),
    ("DELETE", "/v1/files/file-x"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches"),
    ("POST", "/v1/batches/batch_x/cancel"),
]


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
def test_every_route_needs_a_valid_key(secured, method, path):
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {KEY_A}"}):
        response = httpx.request(method, f"{secured}{path}", headers=headers, json={})
        assert response.status_code == 401, (path, headers, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert KEY_A not in response.text


def test_two_authorization_headers_are_refused_whichever_comes_first(secured):
    for pair in ((KEY_A, "sk-wrong"), ("sk-wrong", KEY_A), (KEY_A, KEY_B)):
        headers = [("authorization", f"Bearer {key}") for key in pair]
        response = httpx.get(f"{secured}/v1/models", headers=headers)
        assert response.status_code == 401, (pair, response.text)
        assert "exactly one Authorization header" in response.json()["error"]["message"]
    assert (
        httpx.get(f"{secured}/v1/models", headers={"Authorization": f"Bearer {KEY_A}"}).status_code
        == 200
    )


def test_health_ready_and_metrics_stay_open(secured):
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{secured}{path}").status_code == 200


def test_a_key_works_with_the_openai_client(secured):
    vector = _client(secured, KEY_A).embeddings.create(model=MINILM, input="hello")
    assert len(vector.data[0].embedding) == 384


def test_jobs_files_and_batches_are_private_to_their_key(secured):
    a, b = _client(secured, KEY_A), _client(secured, KEY_B)
    headers_a = {"Authorization": f"Bearer {KEY_A}"}
    headers_b = {"Authorization": f"Bearer {KEY_B}"}
    job = httpx.post(
        f"{secured}/v1/jobs",
        json={"endpoint": "/v1/embeddings", "body": {"model": MINILM, "input": "mine"}},
        headers=headers_a,
    ).json()
    assert httpx.get(f"{secured}/v1/jobs/{job['id']}", headers=headers_a).status_code == 200
    assert httpx.get(f"{secured}/v1/jobs/{job['id']}", headers=headers_b).status_code == 404
    assert httpx.post(f"{secured}/v1/jobs/{job['id']}/cancel", headers=headers_b).status_code == 404
    listed_b = httpx.get(f"{secured}/v1/jobs", headers=headers_b).json()["data"]
    assert job["id"] not in [j["id"] for j in listed_b]

    line = {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": MINILM, "input": "x"},
    }
    upload = a.files.create(
        file=("a.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch"
    )
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(upload.id)
    with pytest.raises(openai.NotFoundError):
        b.files.content(upload.id)
    with pytest.raises(openai.NotFoundError):
        b.files.delete(upload.id)
    assert upload.id not in [f.id for f in b.files.list().data]
    with pytest.raises(openai.NotFoundError):
        b.batches.create(
            input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    batch = a.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        b.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        b.batches.cancel(batch.id)
    assert batch.id not in [x.id for x in b.batches.list().data]
    assert a.batches.retrieve(batch.id).id == batch.id


def test_keys_never_reach_the_logs(stack, secured):
    httpx.get(f"{secured}/v1/models", headers={"Authorization": f"Bearer {KEY_A}"})
    httpx.get(f"{secured}/v1/models", headers={"Authorization": "Bearer sk-leaked-guess"})
    logs = stack.logs()
    assert KEY_A not in logs and KEY_B not in logs and "sk-leaked-guess" not in logs


def test_queue_depth_limit_gives_429_and_drops_nothing(stack, redis_client):
    model = "google/embeddinggemma-300m"  # announced below, never consumed in the tests
    limited = stack.start_api(MAX_QUEUE_DEPTH="2")
    redis_client.zadd(p.workers_key(model), {"placeholder-429": p.now() + 60})
    try:
        body = {"endpoint": "/v1/embeddings", "body": {"model": model, "input": "x"}}
        accepted = [httpx.post(f"{limited}/v1/jobs", json=body) for _ in range(2)]
        assert [r.status_code for r in accepted] == [202, 202]
        refused = httpx.post(f"{limited}/v1/jobs", json=body)
        assert refused.status_code == 429
        assert refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        for response in accepted:  # the accepted ones are still there, queued
            job = httpx.get(f"{limited}/v1/jobs/{response.json()['id']}").json()
            assert job["status"] == "queued"
        assert sum(redis_client.llen(q) for q in p.queue_lists(model)) == 2
        for response in accepted:
            httpx.post(f"{limited}/v1/jobs/{response.json()['id']}/cancel")
    finally:
        redis_client.zrem(p.workers_key(model), "placeholder-429")


def test_api_metrics(stack, openai_client):
    openai_client.embeddings.create(model=MINILM, input="count me")
    text = httpx.get(f"{stack.base_url}/metrics").text
    assert (
        f'inferq_http_requests_total{{method="POST",model="{MINILM}",route="/v1/embeddings",'
        'status="200"}' in text
    )
    assert 'inferq_http_request_duration_seconds_bucket{le="0.0025",method="POST"' in text
    assert f'inferq_queue_depth{{model="{MINILM}",priority="0"}}' in text
    assert f'inferq_live_workers{{model="{MINILM}"}} 1.0' in text
    assert (
        f'inferq_jobs_finished{{endpoint="/v1/embeddings",model="{MINILM}",status="succeeded"}}'
        in text
    )


def test_worker_metrics_port(stack):
    port = free_port()
    stack.start_worker(["tiny-bert-cls"], WORKER_METRICS_PORT=str(port), WORKER_CONCURRENCY="2")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    assert 'inferq_worker_model_load_seconds{model="tiny-bert-cls"}' in text
    # its warm-up passes are not traffic: no batches counted before a job
    assert 'inferq_worker_batch_size_count{model="tiny-bert-cls"}' not in text
    # its start-up heap (torch, transformers, the model) is out of the GC's full passes
    frozen = re.search(r"^inferq_worker_frozen_objects (\S+)$", text, re.M)
    assert frozen is not None and float(frozen.group(1)) > 100_000
    # on tcmalloc (WORKER_MALLOC=auto; `make test` installs it): tests/test_native_env.py
    assert 'inferq_worker_allocator_info{allocator="tcmalloc"} 1.0' in text
    # The session worker serves the model too: send jobs until this worker has run one.
    for _ in range(60):
        body = {"model": "tiny-bert-cls", "input": "hi"}
        assert httpx.post(f"{stack.v1}/embeddings", json=body, timeout=30).status_code == 200
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        if "inferq_worker_queue_wait_seconds_bucket" in text:
            break
    assert "inferq_worker_queue_wait_seconds_bucket" in text
    assert 'inferq_worker_batch_size_count{model="tiny-bert-cls"}' in text


def test_logs_are_json_lines_with_request_and_job_ids(stack):
    response = httpx.post(
        f"{stack.v1}/embeddings",
        json={"model": MINILM, "input": "log me"},
        headers={"X-Request-ID": "req-json-logs"},
    )
    job_id = response.headers["x-job-id"]
    records = []
    for path in stack.log_dir.glob("worker-*.log"):
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
    mine = [r for r in records if r.get("job_id") == job_id]
    assert mine, "no worker log line carries the job id"
    assert all(r["request_id"] == "req-json-logs" for r in mine)
    assert {"time", "level", "logger", "message", "service"} <= set(mine[0])
