"""Hostile use of the job API through the real stack: odd ids, and many open event streams."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from inferq import protocol as p
from tests.batches_support import jsonl, wait_batch
from tests.conftest import MINILM

UNSERVED = "Qwen/Qwen3-Embedding-4B"  # in the catalog, no worker in the tests


def _finished_job(v1: str) -> str:
    body = {"endpoint": "/v1/embeddings", "body": {"model": MINILM, "input": "x"}}
    job_id = httpx.post(f"{v1}/jobs", json=body).json()["id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{v1}/jobs/{job_id}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job_id


@pytest.fixture
def unserved_queue(redis_client):
    """The runners a batch of the unserved model sends wait on its queue for ever: drop them."""
    yield UNSERVED
    redis_client.delete(*p.queue_lists(UNSERVED))


def test_an_id_that_names_a_key_beside_a_record_is_a_404(stack, openai_client, unserved_queue):
    """A job's event stream is ``inferq:job:<id>:events``, a batch's settled parts
    ``inferq:batch:<id>:done`` (a set) and ``:out:<n>`` (lists): the id ``<id>:events`` read
    that stream as if it were a job hash, a WRONGTYPE reply from Redis, and a 500."""
    job_id = _finished_job(stack.v1)
    for method, path in (
        ("GET", f"jobs/{job_id}:events"),
        ("POST", f"jobs/{job_id}:events/cancel"),
        ("GET", f"jobs/{job_id}:events/events"),
    ):
        response = httpx.request(method, f"{stack.v1}/{path}")
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "job_not_found"
    # a batch whose first part (served) settled while its second (no worker) waits
    line = {"custom_id": "", "method": "POST", "url": "/v1/embeddings"}
    lines = [
        {**line, "custom_id": "served", "body": {"model": MINILM, "input": "a"}},
        {**line, "custom_id": "waits", "body": {"model": UNSERVED, "input": "b"}},
    ]
    upload = openai_client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while openai_client.batches.retrieve(batch.id).request_counts.completed < 1:
        assert time.monotonic() < deadline, "the served part did not settle"
        time.sleep(0.1)
    for method, path in (
        ("GET", f"batches/{batch.id}:done"),
        ("GET", f"batches/{batch.id}:out:0"),
        ("POST", f"batches/{batch.id}:done/cancel"),
        ("GET", f"files/{upload.id}:x"),
    ):
        response = httpx.request(method, f"{stack.v1}/{path}")
        assert response.status_code == 404, (path, response.text)
    assert openai_client.batches.cancel(batch.id).status == "cancelling"
    assert wait_batch(openai_client, batch.id, timeout=60).status == "cancelled"


def test_open_event_streams_do_not_starve_other_requests(stack, redis_client):
    """Each ``/events`` stream of an unfinished job waited for entries in a blocking XREAD
    (1 s) on the API's Redis pool (64 connections), one after another: 100 streams held
    every connection, and any other request (a sync embedding, a job lookup) waited 10 s
    for one, then got a 503. Blocking reads now take at most half the pool."""
    job_id = _finished_job(stack.v1)
    # the job made unfinished again: its stream ends with nothing but ``running``
    redis_client.hset(p.job_key(job_id), p.JobField.STATUS, p.JobStatus.RUNNING)
    redis_client.delete(p.events_key(job_id))
    running = p.event_fields(p.EventType.STATUS, {"status": p.JobStatus.RUNNING})
    redis_client.xadd(p.events_key(job_id), running)
    redis_client.expire(p.events_key(job_id), 600)

    async def main() -> list[tuple[int, float]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            opened, statuses = asyncio.Semaphore(0), []

            async def watch() -> None:
                async with client.stream("GET", f"{stack.v1}/jobs/{job_id}/events") as response:
                    statuses.append(response.status_code)
                    opened.release()
                    async for _ in response.aiter_bytes():
                        pass

            watchers = [asyncio.create_task(watch()) for _ in range(100)]
            timings = []
            try:
                for _ in watchers:
                    await asyncio.wait_for(opened.acquire(), 60)
                assert statuses == [200] * 100, statuses
                await asyncio.sleep(3)  # every stream in its read loop
                for _ in range(3):
                    started = time.monotonic()
                    response = await client.post(
                        f"{stack.v1}/embeddings", json={"model": MINILM, "input": "hello"}
                    )
                    timings.append((response.status_code, time.monotonic() - started))
                    started = time.monotonic()
                    response = await client.get(f"{stack.v1}/jobs/{job_id}")
                    timings.append((response.status_code, time.monotonic() - started))
            finally:
                for watcher in watchers:
                    watcher.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
            return timings

    try:
        timings = asyncio.run(main())
    finally:
        redis_client.hset(p.job_key(job_id), p.JobField.STATUS, p.JobStatus.SUCCEEDED)
    assert [status for status, _ in timings] == [200] * 6, timings
    assert max(seconds for _, seconds in timings) < 2, timings


@pytest.fixture(scope="module")
def small_bodies(stack) -> str:
    return stack.start_api(MAX_BODY_BYTES="100000")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/embeddings", "/rerank"])
def test_a_json_body_past_the_limit_is_a_413_before_it_is_read(small_bodies, path):
    """Only the chat route bounded its JSON body: any other read a body of any size whole and
    parsed it on the API's one event loop before any check (a 300 MB /v1/jobs body, one text
    past its 32 768-character limit, held every other request, /health too, for 3.6 s before
    its 400). A declared size past MAX_BODY_BYTES is now a 413 before the body is read, and a
    chunked body one once it crosses the limit."""
    import socket
    from urllib.parse import urlsplit

    base = small_bodies
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n".encode()
            + b"Content-Type: application/json\r\n\r\n"
        )
        head = b""
        while b"request_too_large" not in head:  # the body may come in a packet of its own
            piece = conn.recv(4096)
            if not piece:
                break
            head += piece
    assert head.startswith(b"HTTP/1.1 413"), head

    def chunked(data: bytes):
        for start in range(0, len(data), 16384):
            yield data[start : start + 16384]

    text = {"model": MINILM, "input": "x" * 200_000}
    job = {"endpoint": "/v1/embeddings", "body": text}
    body = json.dumps(job if path == "/v1/jobs" else text).encode()
    headers = {"content-type": "application/json"}
    response = httpx.post(f"{base}{path}", content=chunked(body), headers=headers, timeout=30)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    small = {"endpoint": "/v1/embeddings", "body": {"model": MINILM, "input": "hi"}}
    if path == "/v1/jobs":
        response = httpx.post(
            f"{base}{path}", content=chunked(json.dumps(small).encode()), headers=headers
        )
        assert response.status_code == 202, response.text
