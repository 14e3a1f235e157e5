"""The job API: submit, poll, list, cancel, expire, against real workers."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from inferq import protocol as p
from tests.conftest import MINILM


def _submit(base: str, body: dict, **extra) -> dict:
    response = httpx.post(
        f"{base}/v1/jobs", json={"endpoint": "/v1/embeddings", "body": body, **extra}
    )
    assert response.status_code == 202, response.text
    return response.json()


def _poll(base: str, job_id: str, until=p.TERMINAL_STATUSES, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/v1/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


def test_job_result_equals_the_sync_result(stack):
    body = {"model": MINILM, "input": ["job one", "job two"], "encoding_format": "float"}
    job = _submit(stack.base_url, body, metadata={"purpose": "test"})
    assert job["object"] == "job"
    assert job["status"] in ("queued", "running", "succeeded")
    assert job["endpoint"] == "/v1/embeddings"
    assert job["model"] == MINILM
    assert job["metadata"] == {"purpose": "test"}
    done = _poll(stack.base_url, job["id"])
    assert done["status"] == "succeeded"
    assert done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    sync = httpx.post(f"{stack.v1}/embeddings", json=body).json()
    assert done["result"]["usage"] == sync["usage"]
    assert done["result"]["model"] == sync["model"]
    np.testing.assert_allclose(
        [d["embedding"] for d in done["result"]["data"]],
        [d["embedding"] for d in sync["data"]],
        atol=1e-6,
    )


def test_job_validation_errors_name_the_field(stack):
    bad_endpoint = httpx.post(
        f"{stack.v1}/jobs", json={"endpoint": "/v1/nope", "body": {"model": MINILM, "input": "x"}}
    )
    assert bad_endpoint.status_code == 400
    assert bad_endpoint.json()["error"]["param"] == "endpoint"
    bad_body = httpx.post(
        f"{stack.v1}/jobs", json={"endpoint": "/v1/embeddings", "body": {"model": MINILM}}
    )
    assert bad_body.status_code == 400
    assert bad_body.json()["error"]["param"].startswith("body")
    unknown = httpx.post(
        f"{stack.v1}/jobs",
        json={"endpoint": "/v1/embeddings", "body": {"model": "x/y", "input": "a"}},
    )
    assert unknown.status_code == 404


def test_unknown_job_is_404(stack):
    for response in (
        httpx.get(f"{stack.v1}/jobs/job_doesnotexist"),
        httpx.post(f"{stack.v1}/jobs/job_doesnotexist/cancel"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"


def test_large_job_reports_progress_and_can_be_cancelled_while_running(stack, openai_client):
    texts = [f"bulk text {i} about nothing in particular" for i in range(60_000)]
    job = _submit(stack.base_url, {"model": MINILM, "input": texts})
    running = _poll(stack.base_url, job["id"], until={"running"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = httpx.get(f"{stack.v1}/jobs/{job['id']}").json()
        if running["progress"]:
            break
        time.sleep(0.1)
    progress = running["progress"]
    assert 0 < progress["completed"] < progress["total"] == 60_000
    cancelled = httpx.post(f"{stack.v1}/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    # The worker lets go within a batch: an interactive request is answered promptly.
    started = time.monotonic()
    openai_client.embeddings.create(model=MINILM, input="still responsive")
    assert time.monotonic() - started < 10
    time.sleep(1.0)
    final = httpx.get(f"{stack.v1}/jobs/{job['id']}").json()
    assert final["status"] == "cancelled"
    assert final["result"] is None
    assert final["progress"]["completed"] < 60_000


def test_cancelled_queued_job_never_runs(stack, redis_client):
    """A model announced but not yet consumed: its job waits on the queue; cancel it there."""
    model = "tiny-bert-mean"
    redis_client.zadd(p.workers_key(model), {"placeholder": p.now() + 30})
    try:
        job = _submit(stack.base_url, {"model": model, "input": "never embedded"})
        assert job["status"] == "queued"
        assert sum(redis_client.llen(q) for q in p.queue_lists(model)) == 1
        cancelled = httpx.post(f"{stack.v1}/jobs/{job['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
    finally:
        redis_client.zrem(p.workers_key(model), "placeholder")
    stack.start_worker([model])
    later = _submit(stack.base_url, {"model": model, "input": "embedded"})
    assert _poll(stack.base_url, later["id"])["status"] == "succeeded"
    final = httpx.get(f"{stack.v1}/jobs/{job['id']}").json()
    assert final["status"] == "cancelled"
    assert final["started_at"] is None
    assert final["result"] is None


def test_list_is_newest_first_and_paginates(stack):
    ids = [_submit(stack.base_url, {"model": MINILM, "input": f"list {i}"})["id"] for i in range(3)]
    first = httpx.get(f"{stack.v1}/jobs", params={"limit": 2}).json()
    assert first["object"] == "list"
    assert [j["id"] for j in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    assert first["last_id"] == ids[1]
    second = httpx.get(f"{stack.v1}/jobs", params={"limit": 2, "after": first["last_id"]}).json()
    assert second["data"][0]["id"] == ids[0]
    assert httpx.get(f"{stack.v1}/jobs", params={"limit": 0}).status_code == 400


@pytest.mark.parametrize("ttl", [5])
def test_jobs_expire_after_result_ttl(stack, ttl):
    short_lived = stack.start_api(RESULT_TTL_SEC=str(ttl))
    job = _submit(short_lived, {"model": MINILM, "input": "ephemeral"})
    assert _poll(short_lived, job["id"])["status"] == "succeeded"
    time.sleep(ttl + 1.0)
    response = httpx.get(f"{short_lived}/v1/jobs/{job['id']}")
    assert response.status_code == 404
    listed = httpx.get(f"{short_lived}/v1/jobs").json()["data"]
    assert job["id"] not in [j["id"] for j in listed]
