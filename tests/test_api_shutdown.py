"""A stopping API: SIGTERM while a sync request waits for a job no worker will run. The request
is answered 503 (an OpenAI error) after API_SHUTDOWN_GRACE_SEC, its job cancelled, and the
process exits and frees its port (it used to wait for the handler for ever)."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time

import httpx

from inferq import protocol as p
from inferq.devstack import port_in_use, spawn, stop, wait_http_ready
from tests.conftest import free_port

MODEL = "BAAI/bge-m3"  # in the shipped catalog; no test worker serves it
FAKE_WORKER = "worker@nowhere:1"


def test_sigterm_answers_waiting_requests_503_and_exits(redis_url, redis_client, tmp_path):
    port = free_port()
    env = {"REDIS_URL": redis_url, "PORT": str(port), "API_SHUTDOWN_GRACE_SEC": "2"}
    # A worker that announces the model but never consumes: the request waits for ever.
    redis_client.zadd(p.workers_key(MODEL), {FAKE_WORKER: p.now() + 600})
    api = spawn("api", env, log_path=tmp_path / "api.log")
    answers: list[httpx.Response] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http_ready(f"{base}/health", timeout=60, proc=api)

        def call() -> None:
            body = {"model": MODEL, "input": "never served"}
            answers.append(httpx.post(f"{base}/v1/embeddings", json=body, timeout=60))

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 10
        while not redis_client.llen(p.queue_name(MODEL)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert redis_client.llen(p.queue_name(MODEL)) == 1  # the request is waiting on its job
        message = json.loads(redis_client.lindex(p.queue_name(MODEL), 0))
        job_id = json.loads(base64.b64decode(message["body"]))[0][0]
        signalled = time.monotonic()
        api.send_signal(signal.SIGTERM)
        caller.join(30)
        answered = time.monotonic() - signalled
        assert api.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
        exited = time.monotonic() - signalled
    finally:
        stop(api, timeout=5)
        redis_client.zrem(p.workers_key(MODEL), FAKE_WORKER)
        redis_client.delete(*p.queue_lists(MODEL))
    assert len(answers) == 1
    response = answers[0]
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "server_shutting_down"
    assert response.headers["retry-after"]
    assert 1.5 <= answered < 8, answered  # the grace, then at most a poll interval
    assert exited < 12, exited
    assert not port_in_use("127.0.0.1", port)
    # the job nobody waits for any more is cancelled, not left to run later
    assert redis_client.hget(p.job_key(job_id), "status") == b"cancelled"


def test_sigterm_ends_open_streams_with_an_error_event(redis_url, redis_client, tmp_path):
    """An open event stream is not cut silently: after the grace it ends with an
    ``event: error`` carrying ``server_shutting_down``, and the process still exits."""
    port = free_port()
    env = {"REDIS_URL": redis_url, "PORT": str(port), "API_SHUTDOWN_GRACE_SEC": "2"}
    redis_client.zadd(p.workers_key(MODEL), {FAKE_WORKER: p.now() + 600})
    api = spawn("api", env, log_path=tmp_path / "api.log")
    lines: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http_ready(f"{base}/health", timeout=60, proc=api)
        job = {"endpoint": "/v1/embeddings", "body": {"model": MODEL, "input": "never served"}}
        created = httpx.post(f"{base}/v1/jobs", json=job, timeout=30)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        def read() -> None:
            with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", timeout=60) as stream:
                lines.extend(stream.iter_lines())

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(1.0)  # the stream is open and has sent the queued status
        api.send_signal(signal.SIGTERM)
        reader.join(30)
        assert not reader.is_alive()
        assert api.wait(30) in (0, -signal.SIGTERM)
    finally:
        stop(api, timeout=5)
        redis_client.zrem(p.workers_key(MODEL), FAKE_WORKER)
        redis_client.delete(*p.queue_lists(MODEL))
    assert "event: error" in lines, lines
    data = [line for line in lines if line.startswith("data:")][-1]
    assert json.loads(data[5:])["error"]["code"] == "server_shutting_down"
