"""A forward pass that does not end (``tests.crashing.CrashingEmbedder``: the text HANG
sleeps 60 s in the pass) holds neither its job past the job's time limit, nor a cancelled job,
nor a cancelled batch, nor the model: real API, Redis and worker processes."""

from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np

from handlers.embedding import HFEmbeddingModel
from inferq import protocol as p
from inferq.devstack import stop
from tests.private_stack import wait_for

MODEL = "crash-bert"  # tiny BERT, 0.15 s per pass; the text HANG sleeps 60 s in its pass
LIMIT_SEC = 4
# The limit, then workers/jobs.py's ABANDON_AFTER_SEC (5 s) and a poll (1 s), with slack:
# far below the hung pass's 60 s.
GIVE_UP_SEC = LIMIT_SEC + 5 + 1 + 8
# Two lanes whatever the cores: the hung pass holds one, the other serves what comes after.
LANES = {"EMBED_LANES": "2"}


def _decoded(response: httpx.Response) -> np.ndarray:
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


def test_a_hung_pass_fails_its_request_at_the_limit_and_the_model_serves_on(stack, tiny_embedders):
    worker = stack.start_worker(
        [MODEL], JOB_TIMEOUTS=json.dumps({"/v1/embeddings": LIMIT_SEC}), **LANES
    )
    try:
        started = time.monotonic()
        hung = httpx.post(
            f"{stack.v1}/embeddings", json={"model": MODEL, "input": "HANG"}, timeout=90
        )
        took = time.monotonic() - started
        assert hung.status_code == 504, hung.text
        assert hung.json()["error"]["code"] == "timeout"
        assert LIMIT_SEC <= took < GIVE_UP_SEC
        # lane 0 is still in the hung pass (on both cores); once it counts as stalled
        # (workers/batching.py: 10 s) the other lane serves what comes, with the right vectors
        texts = ["still served", "after a hung pass"]
        served = httpx.post(
            f"{stack.v1}/embeddings", json={"model": MODEL, "input": texts}, timeout=90
        )
        assert served.status_code == 200, served.text
        reference = HFEmbeddingModel(str(tiny_embedders["bert"]), "cpu").embed(texts)
        np.testing.assert_allclose(_decoded(served), reference, atol=1e-5)
    finally:
        stop(worker)


def test_a_job_cancelled_in_a_hung_pass_frees_its_thread(stack):
    """One job thread: the cancelled job must give it back (the pass is left running) for the
    next request to be served before the hung pass ends."""
    worker = stack.start_worker([MODEL], WORKER_CONCURRENCY="1", **LANES)
    try:
        response = httpx.post(
            f"{stack.base_url}/v1/jobs",
            json={"endpoint": "/v1/embeddings", "body": {"model": MODEL, "input": ["HANG"]}},
        )
        assert response.status_code == 202, response.text
        job_url = f"{stack.base_url}/v1/jobs/{response.json()['id']}"
        wait_for(lambda: httpx.get(job_url).json()["status"] == "running", 30, "running")
        time.sleep(1.0)  # in the pass by now (a pass starts within ms of the job)
        started = time.monotonic()
        assert httpx.post(f"{job_url}/cancel").status_code == 200
        assert httpx.get(job_url).json()["status"] == "cancelled"
        served = httpx.post(
            f"{stack.v1}/embeddings", json={"model": MODEL, "input": "next"}, timeout=90
        )
        assert served.status_code == 200, served.text
        # ABANDON_AFTER_SEC (5 s) and a poll after the cancel; the batcher's stall rule (10 s
        # after the pass began); slack. The hung pass ends 60 s after it began.
        assert time.monotonic() - started < 25
    finally:
        stop(worker)


def _batch(openai_client, texts: list[str]):
    rows = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": text},
        }
        for i, text in enumerate(texts)
    ]
    payload = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    upload = openai_client.files.create(file=("in.jsonl", io.BytesIO(payload)), purpose="batch")
    return openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )


def _ended(openai_client, batch_id: str):
    return wait_for(
        lambda: (
            (b := openai_client.batches.retrieve(batch_id)).status
            in ("completed", "failed", "cancelled", "expired")
            and b
        ),
        90,
        f"batch {batch_id} to end",
    )


def test_a_batch_cancelled_while_a_line_hangs_frees_its_part_slot(
    stack, openai_client, tiny_embedders
):
    """One part slot: the cancelled batch's runner must give it back (its hung pass left
    running) for the next batch to run before the hung pass ends."""
    worker = stack.start_worker([MODEL], BATCH_ACTIVE_PARTS="1", **LANES)
    try:
        batch = _batch(openai_client, ["HANG", "line 1", "line 2"])
        wait_for(
            lambda: openai_client.batches.retrieve(batch.id).status == "in_progress",
            60,
            "the batch to run",
        )
        time.sleep(2.0)  # its part is in the hung pass by now
        started = time.monotonic()
        openai_client.batches.cancel(batch.id)
        assert _ended(openai_client, batch.id).status == "cancelled"
        texts = [f"next batch {i}" for i in range(3)]
        after = _ended(openai_client, _batch(openai_client, texts).id)
        assert after.status == "completed", after
        # the part's stop poll (1 s), a wait's poll (1 s), then ABANDON_AFTER_SEC (5 s) for
        # all of the part's lines together; the batcher's stall rule for the next batch;
        # slack. The hung pass ends 60 s after it began.
        assert time.monotonic() - started < 30
        content = openai_client.files.content(after.output_file_id).text
        got = {
            line["custom_id"]: line["response"]["body"]["data"][0]["embedding"]
            for line in map(json.loads, content.splitlines())
        }
        reference = HFEmbeddingModel(str(tiny_embedders["bert"]), "cpu").embed(texts)
        np.testing.assert_allclose(
            np.array([got[f"line-{i}"] for i in range(3)]), reference, atol=1e-5
        )
    finally:
        stop(worker)


def test_output_after_its_job_stopped_is_not_written(redis_client):
    """A pass the job stopped waiting for may still produce output (a chat step that ends
    after the job's final status): once the job closes its events, it is dropped."""
    from workers.events import EventPublisher, JobEvents

    publisher = EventPublisher(redis_client)
    key = p.events_key("stopped-job")
    redis_client.delete(key)
    redis_client.xadd(key, p.event_fields(p.EventType.STATUS, {"status": "running"}))
    events = JobEvents(publisher, "stopped-job")
    events.delta("before")
    events.close()
    events.delta("after")
    events.tool_calls([{"index": 0, "function": {"name": "late"}}])
    events.chunk('{"late": true}')
    # the publisher writes in order: once this is written, anything queued before it is too
    assert publisher.wait_written(publisher.publish("other-job", p.EventType.DELTA, {}))
    entries = [json.loads(fields[b"data"]) for _, fields in redis_client.xrange(key)[1:]]
    assert entries == [{"content": "before"}]
