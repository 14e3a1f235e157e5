"""Outages under running jobs (issue 12), on a stack of its own: a worker SIGKILLed mid-job
hands its jobs on once its leases lapse (not after the visibility timeout), a chat stream
whose worker is killed still carries one answer (a retry that departs from it restarts it),
and a stream whose Redis is killed ends with an error event (last: it kills the Redis)."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from inferq import protocol as p
from tests.chat_support import sse_events
from tests.private_stack import (
    CRASH_BERT,
    SLOW_CHAT,
    slow_chat_no_eos,
    start_private_stack,
    wait_for,
)

MODELS = [SLOW_CHAT, CRASH_BERT]


@pytest.fixture(scope="module")
def private(tmp_path_factory, tiny_embedders):
    stack = start_private_stack(
        tmp_path_factory.mktemp("robust-outages"), tiny_embedders["bert"], [MODELS, MODELS]
    )
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def no_eos() -> dict[str, int]:
    return slow_chat_no_eos()


def kill(worker) -> float:
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    return time.monotonic()


def test_a_killed_workers_job_runs_elsewhere_once_its_lease_lapses(private):
    texts = [f"lease {i}" for i in range(6000)]
    created = httpx.post(
        f"{private.v1}/jobs",
        json={"endpoint": "/v1/embeddings", "body": {"model": CRASH_BERT, "input": texts}},
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    holder = private.holder(job_id)
    wait_for(lambda: private.redis.hget(p.job_key(job_id), "progress"), 60, "progress")
    killed_at = kill(holder)
    # presence ttl 3 s, beats every 0.5 s; the visibility timeout is 300 s
    wait_for(lambda: private.redis.hget(p.job_key(job_id), "deliveries") == b"2", 60, "requeue")
    elapsed = time.monotonic() - killed_at
    print(f"\nworker SIGKILL -> its job started on another worker: {elapsed:.1f} s")
    (other,) = private.workers()
    wait_for(lambda: f"job {job_id} started" in other.log_path.read_text(), 10, "its log")
    done = wait_for(
        lambda: (
            (j := httpx.get(f"{private.v1}/jobs/{job_id}").json())["status"] in p.TERMINAL_STATUSES
            and j
        ),
        120,
        "the job's end",
    )
    assert done["status"] == "succeeded", done
    assert len(done["result"]["data"]) == len(texts)
    assert not private.redis.hgetall("unacked")  # nothing left behind for the timeout
    private.start_worker(MODELS)  # two workers again for the next test


def test_a_chat_stream_whose_worker_dies_still_carries_one_answer(private, no_eos):
    """Sampled (temperature 1, no seed): the job's seed comes from its id, so the retry
    retraces the text the dead worker streamed and the stream continues where it was."""
    body = {
        "model": SLOW_CHAT,
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": 250,
        "temperature": 1.0,
        "logit_bias": no_eos,
        "stream": True,
    }
    events = []
    with httpx.stream("POST", f"{private.v1}/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        job_id = r.headers["x-job-id"]
        holder = private.holder(job_id)
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                events.append(line[5:].strip())
            if len(events) == 40:
                kill(holder)
                break
        events += [line[5:].strip() for line in lines if line.startswith("data:")]
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c], chunks[-2:]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    job = httpx.get(f"{private.v1}/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert int(private.redis.hget(p.job_key(job_id), "deliveries")) == 2
    answer = job["result"]["choices"][0]["message"]["content"]
    assert job["result"]["usage"]["completion_tokens"] == 250
    assert streamed == answer  # one answer: nothing repeated, nothing missing
    raw = sse_events(httpx.get(f"{private.v1}/jobs/{job_id}/events", timeout=60))
    deltas = [json.loads(e["data"])["content"] for e in raw if e.get("event") == "delta"]
    assert "".join(deltas) == answer
    assert not [e for e in raw if e.get("event") == "restart"]


def test_a_retry_that_departs_from_the_stream_restarts_it(redis_client):
    """Worker side, on a real Redis: a redelivered run's output against what the stream holds
    (retraced and continued; or departing, announced by a ``restart``, then in full)."""
    from workers.events import EventPublisher, JobEvents, streamed_output

    publisher = EventPublisher(redis_client)

    def run(job_id: str, before: list[str], pieces: list[str]) -> list[tuple[str, str]]:
        key = p.events_key(job_id)
        redis_client.delete(key)
        redis_client.xadd(key, p.event_fields(p.EventType.STATUS, {"status": "running"}))
        for text in before:
            redis_client.xadd(key, p.event_fields(p.EventType.DELTA, {"content": text}))
        events = JobEvents(publisher, job_id, *streamed_output(redis_client, job_id))
        for piece in pieces:
            events.delta(piece)
        events.end()
        events.flush()
        entries = redis_client.xrange(key)[1 + len(before) :]
        return [(f[b"event"].decode(), json.loads(f[b"data"])) for _, f in entries]

    def texts(entries):
        return [d.get("content", d.get("discarded")) for _, d in entries]

    assert texts(run("r1", ["Once ", "upon"], ["Once", " up", "on a", " time"])) == [" a", " time"]
    departed = run("r2", ["Once ", "upon"], ["Once", " there"])
    assert [kind for kind, _ in departed] == ["restart", "delta"]
    assert texts(departed) == [9, "Once there"]
    shorter = run("r3", ["Once ", "upon"], ["Once"])  # stopped inside the old text
    assert texts(shorter) == [9, "Once"]


def test_a_restart_entry_ends_a_relayed_stream_with_an_error(private, no_eos):
    """The API side: a ``restart`` on the stream of a relayed chat (what a departing retry
    writes) ends the SSE stream with ``stream_restarted``, and the job is cancelled."""
    body = {
        "model": SLOW_CHAT,
        "messages": [{"role": "user", "content": "a story"}],
        "max_tokens": 300,
        "logit_bias": no_eos,
        "stream": True,
    }
    data = []
    with httpx.stream("POST", f"{private.v1}/chat/completions", json=body, timeout=60) as r:
        job_id = r.headers["x-job-id"]
        for line in r.iter_lines():
            if line.startswith("data:"):
                data.append(line[5:].strip())
            if len(data) == 10:
                private.redis.xadd(
                    p.events_key(job_id), p.event_fields(p.EventType.RESTART, {"discarded": 9})
                )
    assert json.loads(data[-1])["error"]["code"] == "stream_restarted", data[-2:]
    wait_for(lambda: private.redis.hget(p.job_key(job_id), "status") == b"cancelled", 10, "cancel")


def test_a_stream_whose_redis_dies_ends_with_an_error_event(private, no_eos):
    body = {
        "model": SLOW_CHAT,
        "messages": [{"role": "user", "content": "another long story"}],
        "max_tokens": 400,
        "temperature": 0,
        "logit_bias": no_eos,
    }
    created = httpx.post(
        f"{private.v1}/jobs", json={"endpoint": "/v1/chat/completions", "body": body}
    )
    assert created.status_code == 202, created.text
    ends: dict[str, list[str]] = {}

    def read(name: str, method: str, url: str, **kwargs) -> None:
        ends[name] = []
        with httpx.stream(method, url, timeout=60, **kwargs) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line:
                    ends[name].append(line)

    readers = [
        threading.Thread(
            target=read,
            args=("chat", "POST", f"{private.v1}/chat/completions"),
            kwargs={"json": {**body, "stream": True}},
        ),
        threading.Thread(
            target=read, args=("events", "GET", f"{private.v1}/jobs/{created.json()['id']}/events")
        ),
    ]
    for reader in readers:
        reader.start()
    wait_for(lambda: min(len(ends.get(n, [])) for n in ("chat", "events")) > 20, 60, "output")
    private.redis_proc.send_signal(signal.SIGKILL)
    lost_at = time.monotonic()
    for reader in readers:
        reader.join(60)
        assert not reader.is_alive(), "a stream did not end after Redis was lost"
    print(f"\nRedis SIGKILL -> streams ended with an error: {time.monotonic() - lost_at:.1f} s")
    chat_last = ends["chat"][-1]
    assert chat_last.startswith("data:") and "[DONE]" not in chat_last
    assert json.loads(chat_last[5:])["error"]["code"] == "broker_unavailable"
    assert ends["events"][-2] == "event: error", ends["events"][-3:]
    assert json.loads(ends["events"][-1][5:])["error"]["code"] == "broker_unavailable"
