"""Long audio as jobs through the stack: progress then the whole transcript, cancel within a
part, parts shared by two workers, a worker killed mid-file (fixtures in conftest.py)."""

from __future__ import annotations

import json
import shutil
import signal
import time

import httpx
import pytest

from inferq import audio as a
from inferq import protocol as p
from tests.audio.conftest import (
    CHUNK_SEC,
    LONG_SECONDS,
    SENTENCES,
    TINY_EN,
    assert_uploads_back_to,
    blob_keys,
    get_job,
    submit_job,
    wait_job,
    words_of,
)

pytestmark = [
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt)"),
    pytest.mark.timeout(900),
]


# --------------------------------------------------------------------------- long jobs


def test_long_file_job_reports_progress_then_the_whole_transcript(
    stack, client, redis_client, long_flac
):
    before = blob_keys(redis_client)
    job = submit_job(
        stack,
        long_flac,
        response_format="verbose_json",
        **{"timestamp_granularities[]": ["segment", "word"]},
        metadata='{"purpose": "test"}',
    )
    # The response reads the job back after enqueueing: a free worker may already have taken it.
    assert job["status"] in ("queued", "running") and job["metadata"] == {"purpose": "test"}
    assert job["endpoint"] == "/v1/audio/transcriptions"
    snapshots = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        current = get_job(stack, job["id"])
        if current["progress"] and (
            not snapshots or current["progress"] != snapshots[-1]["progress"]
        ):
            snapshots.append(current)
        if current["status"] in p.TERMINAL_STATUSES:
            break
        time.sleep(0.25)
    assert current["status"] == "succeeded", current["error"]
    running = [s["progress"] for s in snapshots if s["status"] == "running"]
    # planned, then at least one partial state: this file's ten one-window parts need two
    # batches of 8 at least (a worker keeps up to two batches of a job's windows in flight,
    # so the parts of one batch settle together)
    assert len(running) >= 2
    fractions = [r["fraction"] for r in running]
    assert fractions == sorted(fractions) and fractions[0] < 1
    assert all(r["unit"] == "seconds" and r["chunks_total"] >= 5 for r in running)
    assert running[0]["total"] == pytest.approx(LONG_SECONDS, abs=3)
    assert running[0]["completed"] == 0 and running[0]["segments"] == []  # planned
    assert any(r["segments"] for r in running if r["fraction"] < 1), "partial segments"
    partial = running[len(running) // 2]
    assert partial["completed"] < partial["total"]
    assert [s["id"] for s in partial["segments"]] == list(range(len(partial["segments"])))

    result = current["result"]
    assert result["duration"] == pytest.approx(LONG_SECONDS, abs=3)
    segments = result["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts)
    assert starts[-1] > LONG_SECONDS - 20 and segments[-1]["end"] <= result["duration"] + 1
    assert len(segments) >= 30
    assert result["text"] == "".join(s["text"] for s in segments).strip()
    for sentence in SENTENCES:
        assert len(words_of(result["text"]) & words_of(sentence)) >= 5, sentence
    word_starts = [w["start"] for w in result["words"]]
    assert word_starts == sorted(word_starts) and len(result["words"]) > 300

    # The parts' records stay with the job; their transcripts and the upload are gone.
    parts = redis_client.hgetall(a.parts_key(job["id"]))
    total = int(parts[b"total"])
    assert total == running[0]["chunks_total"]
    assert all(f"w:{i}".encode() in parts for i in range(total))
    assert not any(k.startswith((b"r:", b"c:")) for k in parts)
    assert_uploads_back_to(redis_client, before)
    # Its event stream: a progress event as the job starts, then one each time parts settle
    # (usually one part; two that finish within one look of the coordinator share an event),
    # each with the segments those parts added.
    stream = httpx.get(f"{stack.v1}/jobs/{job['id']}/events", timeout=30).text
    events = [
        json.loads(line.removeprefix("data: "))
        for block in stream.split("\n\n")
        if "event: progress" in block
        for line in block.splitlines()
        if line.startswith("data: ")
    ]
    counts = [e["chunks_completed"] for e in events]
    assert counts[0] == 0 and counts[-1] == total
    assert counts == sorted(set(counts))  # strictly increasing
    assert sum(len(e["segments"]) for e in events) == len(segments)


def test_cancel_stops_a_long_job_within_a_part(stack, client, redis_client, long_flac, fox_wav):
    before = blob_keys(redis_client)
    job = submit_job(stack, long_flac)
    # A worker claims parts until two batches of windows are in flight: this file's seven
    # one-window parts may all be in the first batch, so cancel once parts are being decoded
    # (claimed), not after one is done (the job might be over by then).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(k.startswith(b"c:") for k in redis_client.hkeys(a.parts_key(job["id"]))):
            break
        time.sleep(0.05)
    cancelled = httpx.post(f"{stack.v1}/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    done_at_cancel = int(redis_client.hget(a.parts_key(job["id"]), "done"))
    total = redis_client.hget(a.parts_key(job["id"]), "total")  # None: still being planned
    assert total is None or done_at_cancel < int(total)
    time.sleep(6)
    final = get_job(stack, job["id"])
    assert final["status"] == "cancelled" and final["result"] is None
    assert int(redis_client.hget(a.parts_key(job["id"]), "done")) <= done_at_cancel + 1
    assert not redis_client.exists(a.pending_key(job["id"]))
    assert_uploads_back_to(redis_client, before)
    # The worker is free again at once.
    started = time.monotonic()
    with open(fox_wav, "rb") as f:
        client.audio.transcriptions.create(model=TINY_EN, file=f)
    assert time.monotonic() - started < 20


def _parts(redis_client, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(a.parts_key(job_id)).items()}


@pytest.fixture(scope="module")
def second_worker(stack, audio_worker):
    return stack.start_worker([TINY_EN], AUDIO_CHUNK_SEC=CHUNK_SEC)


def test_two_workers_share_the_parts_of_one_file(
    stack, client, redis_client, long_flac, audio_worker, second_worker
):
    job = wait_job(stack, submit_job(stack, long_flac)["id"])
    assert job["status"] == "succeeded"
    parts = _parts(redis_client, job["id"])
    ran = [parts[f"w:{i}"] for i in range(int(parts["total"]))]
    assert len(set(ran)) == 2, ran  # both workers transcribed parts of the file
    assert {int(name.rsplit(":", 1)[1]) for name in ran} == {audio_worker.pid, second_worker.pid}
    for sentence in SENTENCES:
        assert len(words_of(job["result"]["text"]) & words_of(sentence)) >= 5


def test_a_worker_killed_mid_file_does_not_lose_the_job(
    stack, client, redis_client, long_flac, audio_worker, second_worker
):
    """SIGKILL the worker transcribing a part for another worker's job: once its heartbeat
    expires, the part is queued again and the surviving worker finishes the file."""
    job = submit_job(stack, long_flac)
    procs = {audio_worker.pid: audio_worker, second_worker.pid: second_worker}
    deadline = time.monotonic() + 120
    victim = None
    while time.monotonic() < deadline and victim is None:
        parts = _parts(redis_client, job["id"])
        if "plan" in parts:
            coordinator = p.loads(parts["plan"])["coordinator"]
            for key, holder in parts.items():
                if key.startswith("c:") and holder != coordinator:
                    victim = (int(key[2:]), holder)
        time.sleep(0.1)
    assert victim is not None, "the helper worker never claimed a part"
    index, holder = victim
    procs[int(holder.rsplit(":", 1)[1])].send_signal(signal.SIGKILL)
    final = wait_job(stack, job["id"], timeout=300)
    assert final["status"] == "succeeded", final["error"]
    parts = _parts(redis_client, job["id"])
    assert parts[f"w:{index}"] == coordinator  # re-run by the survivor
    for sentence in SENTENCES:
        assert len(words_of(final["result"]["text"]) & words_of(sentence)) >= 5
