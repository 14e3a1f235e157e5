"""Crash safety with real processes: SIGKILL, SIGTERM, poison jobs, a Redis restart."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from inferq import protocol as p
from inferq.devstack import redis_server_binary, spawn, stop, wait_http_ready, wait_workers
from tests.conftest import free_port

MODEL = "crash-bert"  # tiny BERT, 0.15 s per forward pass, dies on the text "CRASH"
# Leases are renewed every heartbeat: beats well inside the visibility timeout, so a stalled
# beat on a loaded machine does not look like a lost worker.
FAST_REDELIVERY = {
    "VISIBILITY_TIMEOUT_SEC": "4",
    "HEARTBEAT_INTERVAL_SEC": "0.5",
    "WORKER_CONCURRENCY": "2",
}


def _submit(base: str, texts: list[str]) -> str:
    response = httpx.post(
        f"{base}/v1/jobs",
        json={"endpoint": "/v1/embeddings", "body": {"model": MODEL, "input": texts}},
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _job(base: str, job_id: str) -> dict:
    return httpx.get(f"{base}/v1/jobs/{job_id}").json()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _alone(redis_client, worker: subprocess.Popen) -> None:
    """Wait until ``worker`` is the model's only worker in the presence set: one an earlier
    test killed stays there until its heartbeat lapses (``HEARTBEAT_TTL_SEC``) and a live
    worker's heartbeat prunes it."""
    me = f"worker@{socket.gethostname()}:{worker.pid}".encode()
    _wait_for(
        lambda: redis_client.zrange(p.workers_key(MODEL), 0, -1) == [me],
        20,
        "a killed worker's presence to lapse",
    )


def test_sigkill_mid_job_redelivers_to_another_worker(stack, redis_client):
    first = stack.start_worker([MODEL], **FAST_REDELIVERY)
    texts = [f"text {i}" for i in range(5000)]  # 5 chunks, ~40 passes, ~7 s
    job_id = _submit(stack.base_url, texts)
    _wait_for(
        lambda: (_job(stack.base_url, job_id).get("progress") or {}).get("completed"),
        60,
        "progress",
    )
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert _job(stack.base_url, job_id)["status"] == "running"  # nobody finished it
    second = stack.start_worker([MODEL], **FAST_REDELIVERY)
    done = _wait_for(
        lambda: (j := _job(stack.base_url, job_id))["status"] in p.TERMINAL_STATUSES and j,
        90,
        "redelivery",
    )
    assert done["status"] == "succeeded"
    assert len(done["result"]["data"]) == 5000
    assert int(redis_client.hget(p.job_key(job_id), "deliveries")) == 2
    stop(second)


def test_sigterm_finishes_running_jobs_then_exits(stack, redis_client):
    worker = stack.start_worker([MODEL], **FAST_REDELIVERY)
    _alone(redis_client, worker)  # the job can only run here
    job_id = _submit(stack.base_url, [f"warm shutdown {i}" for i in range(2000)])
    _wait_for(lambda: _job(stack.base_url, job_id)["status"] == "running", 30, "start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(120) == 0
    assert _job(stack.base_url, job_id)["status"] == "succeeded"


def test_poison_job_is_failed_after_bounded_deliveries(stack, redis_client):
    env = {**FAST_REDELIVERY, "MAX_DELIVERIES": "2"}
    job_id = _submit_when_served(stack, env, ["CRASH"])
    for _ in range(4):
        if _job(stack.base_url, job_id)["status"] == "failed":
            break
        worker = stack.start_worker([MODEL], **env)
        try:
            worker.wait(30)  # it dies on the poison (or lives once the job is failed)
        except subprocess.TimeoutExpired:
            stop(worker)
    job = _wait_for(
        lambda: (j := _job(stack.base_url, job_id))["status"] == "failed" and j,
        30,
        "poison verdict",
    )
    assert job["error"]["code"] == "poison_job"
    assert int(redis_client.hget(p.job_key(job_id), "deliveries")) == 3


def _submit_when_served(stack, env, texts) -> str:
    worker = stack.start_worker([MODEL], **env)
    job_id = _submit(stack.base_url, texts)
    worker.wait(30)  # the first delivery kills it
    return job_id


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of our own (AOF persistence on), which the test can stop and restart."""
    port = free_port()

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(tmp_path),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        _wait_for(lambda: _pings(port), 10, "redis")
        return proc

    holder = {"proc": start()}
    yield port, holder, start
    stop(holder["proc"])


def _pings(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_connect_timeout=0.3).ping()
    except redis.RedisError:
        return False


def test_redis_restart_under_load(stack, own_redis, tmp_path: Path):
    """The API answers 503 at once while Redis is down and recovers by itself; accepted jobs
    complete. A worker whose broker connection breaks may exit (a kombu limitation, see
    docs/architecture.md): it is restarted, as its supervisor (compose, systemd, run_dev.py)
    would, and picks the persisted jobs up again."""
    port, holder, start_redis = own_redis
    env = {
        **stack.env,
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "PORT": str(free_port()),
        "VISIBILITY_TIMEOUT_SEC": "4",
    }
    base = f"http://127.0.0.1:{env['PORT']}"
    api = spawn("api", env, log_path=tmp_path / "api.log")
    worker = spawn("workers", {**env, "MODELS": MODEL}, log_path=tmp_path / "worker.log")
    try:
        wait_http_ready(f"{base}/health", timeout=30, proc=api)
        wait_workers(f"{base}/ready", [MODEL], timeout=120, proc=worker)
        accepted = [_submit(base, [f"before outage {i} {j}" for j in range(200)]) for i in range(6)]
        time.sleep(1.2)  # let AOF (fsync every second) catch up with the accepted jobs
        stop(holder["proc"])
        started = time.monotonic()
        down = httpx.post(f"{base}/v1/embeddings", json={"model": MODEL, "input": "x"}, timeout=30)
        assert down.status_code == 503
        assert time.monotonic() - started < 10
        assert httpx.get(f"{base}/ready", timeout=30).status_code == 503
        holder["proc"] = start_redis()
        workers = [worker]

        def recovered() -> bool:
            if workers[-1].poll() is not None:  # what its supervisor would do
                log = tmp_path / f"worker{len(workers)}.log"
                workers.append(spawn("workers", {**env, "MODELS": MODEL}, log_path=log))
            try:
                response = httpx.post(
                    f"{base}/v1/embeddings", json={"model": MODEL, "input": "back"}, timeout=5
                )
            except httpx.TimeoutException:
                return False
            return response.status_code == 200

        _wait_for(recovered, 120, "recovery")
        for job_id in accepted:
            job = _wait_for(
                lambda job_id=job_id: (
                    (j := _job(base, job_id))["status"] in p.TERMINAL_STATUSES and j
                ),
                120,
                f"job {job_id}",
            )
            assert job["status"] == "succeeded", job
    finally:
        for proc in workers if "workers" in locals() else [worker]:
            stop(proc)
        stop(api)


def test_a_job_past_its_time_limit_fails_with_timeout_and_frees_the_worker(stack):
    worker = stack.start_worker(
        [MODEL],
        JOB_TIMEOUTS='{"/v1/embeddings": 2}',
        WORKER_CONCURRENCY="1",
        EMBED_LANES="1",  # the 2048 inputs below take 16 passes of 0.15 s one after another
    )
    try:
        long_job = _submit(stack.base_url, [f"too slow {i}" for i in range(5000)])  # ~30 s
        job = _wait_for(
            lambda: (j := _job(stack.base_url, long_job))["status"] in p.TERMINAL_STATUSES and j,
            60,
            "timeout",
        )
        assert job["status"] == "failed"
        assert job["error"]["code"] == "timeout"
        started = time.monotonic()
        response = httpx.post(
            f"{stack.v1}/embeddings", json={"model": MODEL, "input": "next one"}, timeout=30
        )
        assert response.status_code == 200  # the single job slot is free again
        assert time.monotonic() - started < 10
        sync_timeout = httpx.post(
            f"{stack.v1}/embeddings",
            json={"model": MODEL, "input": [f"sync {i}" for i in range(2048)]},
            timeout=60,
        )
        assert sync_timeout.status_code == 504
        assert sync_timeout.json()["error"]["code"] == "timeout"
        # it ran for its whole limit: the SDKs must not run it again on their own
        assert sync_timeout.headers["x-should-retry"] == "false"
        assert "x-should-retry" not in response.headers
    finally:
        stop(worker)


def _start_batch(openai_client, lines: int, label: str) -> str:
    """A batch of ``lines`` embeddings lines (8 texts each) for MODEL, running."""
    rows = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": [f"{label} {i} {j}" for j in range(8)]},
        }
        for i in range(lines)
    ]
    payload = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    upload = openai_client.files.create(file=("in.jsonl", io.BytesIO(payload)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    _wait_for(
        lambda: openai_client.batches.retrieve(batch.id).request_counts.completed > 0,
        120,
        "first finished part",
    )
    return batch.id


def _finish_on_a_new_worker(stack, openai_client, batch_id: str, lines: int) -> None:
    """Another worker completes the batch: every line in the output exactly once."""
    second = stack.start_worker([MODEL], **FAST_REDELIVERY)
    try:
        done = _wait_for(
            lambda: (
                (b := openai_client.batches.retrieve(batch_id)).status
                in ("completed", "failed", "cancelled", "expired")
                and b
            ),
            240,
            "batch completion",
        )
    finally:
        stop(second)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (lines, 0)
    output = openai_client.files.content(done.output_file_id).text.splitlines()
    ids = [json.loads(line)["custom_id"] for line in output]
    assert sorted(ids) == sorted(f"line-{i}" for i in range(lines))


def test_worker_killed_mid_batch_loses_and_duplicates_no_output_line(stack, openai_client):
    first = stack.start_worker([MODEL], **FAST_REDELIVERY)
    batch_id = _start_batch(openai_client, 400, "batch crash")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    _finish_on_a_new_worker(stack, openai_client, batch_id, 400)


def test_sigterm_mid_batch_hands_the_batch_back(stack, openai_client, redis_client):
    """A warm shutdown finishes the running parts, not the whole batch: the runners go back
    to the queue and another worker completes the batch, every line exactly once."""
    first = stack.start_worker([MODEL], **FAST_REDELIVERY)
    _alone(redis_client, first)
    batch_id = _start_batch(openai_client, 3000, "handed back")  # ~47 parts of 0.6 s
    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0
    left = openai_client.batches.retrieve(batch_id)
    assert left.status == "in_progress"  # it did not stay to run the whole batch
    assert 0 < left.request_counts.completed < 3000
    _finish_on_a_new_worker(stack, openai_client, batch_id, 3000)
