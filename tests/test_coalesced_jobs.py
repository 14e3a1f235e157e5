"""Several interactive jobs in one Celery message (api/publisher.py, JobRuntime.run_many):
each keeps its own result, cancel and crash recovery. Real Redis, real workers."""

from __future__ import annotations

import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import redis
from celery import Celery

from inferq import protocol as p
from tests.conftest import MINILM
from tests.private_stack import CRASH_BERT, start_private_stack, wait_for


def _sent(base: str, model: str) -> tuple[int, int]:
    """(messages, jobs) this API has put on ``model``'s queue, from its /metrics."""
    text = httpx.get(f"{base}/metrics").text
    counts = {}
    for what in ("messages", "jobs"):
        pattern = rf'inferq_queue_messages_sent{{model="{re.escape(model)}",what="{what}"}} (\S+)'
        match = re.search(pattern, text)
        counts[what] = int(float(match.group(1))) if match else 0
    return counts["messages"], counts["jobs"]


def _burst(call, items: list) -> list:
    """``call(item)`` for every item at once (threads released together)."""
    barrier = threading.Barrier(len(items))

    def one(item):
        barrier.wait()
        return call(item)

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(one, items))


def test_concurrent_embeddings_share_messages_and_each_gets_its_own_vectors(stack, openai_client):
    requests = [
        [f"request {i} text {j}: {'word ' * (i % 7)}" for j in range(1 + i % 3)] for i in range(24)
    ]

    def embed(texts: list[str]) -> np.ndarray:
        data = openai_client.embeddings.create(model=MINILM, input=texts).data
        assert [d.index for d in data] == list(range(len(texts)))
        return np.array([d.embedding for d in data])

    alone = [embed(texts) for texts in requests]  # one after another: a message each
    coalesced = False
    for _ in range(5):  # a burst shares messages unless every publish beat the next request
        before = _sent(stack.base_url, MINILM)
        together = _burst(embed, requests)
        after = _sent(stack.base_url, MINILM)
        for got, want in zip(together, alone, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5)
        messages, jobs = after[0] - before[0], after[1] - before[1]
        assert jobs == len(requests)
        if messages < jobs:
            coalesced = True
            break
    assert coalesced, "no two requests of a burst of 24 shared a message"


def test_concurrent_reranks_each_get_their_own_scores(stack):
    stack.start_worker(["tiny-reranker"])
    bodies = [
        {
            "model": "tiny-reranker",
            "query": f"question {i} about {'cats' if i % 2 else 'Berlin'}?",
            "documents": [f"document {k} of request {i}" for k in range(1 + i % 4)],
        }
        for i in range(16)
    ]

    def rerank(body: dict) -> dict:
        response = httpx.post(f"{stack.v1}/rerank", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return {r["index"]: r["relevance_score"] for r in response.json()["results"]}

    alone = [rerank(body) for body in bodies]
    for got, want in zip(_burst(rerank, bodies), alone, strict=True):
        assert got.keys() == want.keys()
        for index, score in want.items():
            assert got[index] == pytest.approx(score, abs=1e-5)


# --- one hand-made message of several jobs, on a stack of its own --------------------------


@pytest.fixture(scope="module")
def private(tmp_path_factory, tiny_embedders):
    stack = start_private_stack(
        tmp_path_factory.mktemp("coalesced"), tiny_embedders["bert"], [[CRASH_BERT]]
    )
    yield stack
    stack.close()


def _one_message(stack, inputs: list[list[str]]) -> list[str]:
    """Jobs for ``inputs`` (embeddings of CRASH_BERT) carried by ONE message, as the API's
    publisher sends interactive jobs that arrive together."""
    store = redis.Redis.from_url(stack.env["REDIS_URL"])
    job_ids = []
    for i, texts in enumerate(inputs):
        job_id = p.new_job_id()
        fields = p.new_job_fields(
            job_id=job_id,
            kind=p.JobKind.JOB,
            endpoint=p.Endpoint.EMBEDDINGS,
            model=CRASH_BERT,
            owner="anonymous",  # the owner of unauthenticated requests
            request={"model": CRASH_BERT, "input": texts, "encoding_format": "float"},
            priority=p.Priority.INTERACTIVE,
            metadata=None,
            notify="",
            request_id=f"coalesced-{i}",
            ttl=600,
        )
        store.hset(p.job_key(job_id), mapping=fields)
        store.expire(p.job_key(job_id), 600)
        job_ids.append(job_id)
    app = Celery("coalesced-test")
    app.conf.update(p.celery_config(stack.env["REDIS_URL"], 300, task_events=False))
    app.send_task(
        p.TASK_NAMES[p.Endpoint.EMBEDDINGS],
        args=job_ids,
        queue=p.queue_name(CRASH_BERT),
        priority=int(p.Priority.INTERACTIVE),
    )
    return job_ids


def _record(stack, job_id: str) -> dict:
    raw = stack.redis.hgetall(p.job_key(job_id))
    return {k.decode(): v for k, v in raw.items()}


def _terminal(stack, job_id: str, timeout: float = 120) -> dict:
    return wait_for(
        lambda: (
            (r := _record(stack, job_id)).get("status", b"").decode() in p.TERMINAL_STATUSES and r
        ),
        timeout,
        f"job {job_id} to finish",
    )


def _vectors(record: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in p.loads(record["result"])["data"]])


def _reference(stack, texts: list[str]) -> np.ndarray:
    response = httpx.post(
        f"{stack.v1}/embeddings", json={"model": CRASH_BERT, "input": texts}, timeout=120
    )
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]])


def test_a_cancelled_job_of_a_message_leaves_the_others_their_results(private):
    small = [["alpha beta", "gamma"], ["delta epsilon zeta"]]
    long = [f"long job text {i}" for i in range(3000)]  # ~25 passes of 0.15 s
    long_id, *small_ids = _one_message(private, [long, *small])
    wait_for(lambda: _record(private, long_id).get("status") == b"running", 60, "the long job")
    cancel = httpx.post(f"{private.v1}/jobs/{long_id}/cancel")
    assert cancel.status_code == 200, cancel.text
    assert _terminal(private, long_id)["status"] == b"cancelled"
    for job_id, texts in zip(small_ids, small, strict=True):
        record = _terminal(private, job_id)
        assert record["status"] == b"succeeded", record
        np.testing.assert_allclose(_vectors(record), _reference(private, texts), atol=1e-5)


def test_a_killed_worker_hands_every_job_of_its_message_on(private):
    second = private.start_worker([CRASH_BERT])
    long = [f"lease text {i}" for i in range(4000)]
    small = [["one small request"], ["another", "small request"]]
    long_id, *small_ids = _one_message(private, [long, *small])
    holder = private.holder(long_id)
    wait_for(lambda: _record(private, long_id).get("progress"), 60, "progress of the long job")
    done_before = {
        job_id for job_id in small_ids if _record(private, job_id).get("status") == b"succeeded"
    }
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    survivor = second if holder is not second else private.workers()[0]
    assert survivor.poll() is None
    record = _terminal(private, long_id, timeout=180)
    assert record["status"] == b"succeeded", record
    assert len(p.loads(record["result"])["data"]) == len(long)
    assert int(record["deliveries"]) == 2
    for job_id, texts in zip(small_ids, small, strict=True):
        record = _terminal(private, job_id)
        assert record["status"] == b"succeeded", record
        np.testing.assert_allclose(_vectors(record), _reference(private, texts), atol=1e-5)
        # a job finished before the crash is not run again (START skips it)
        assert int(record["deliveries"]) == (1 if job_id in done_before else 2)
