"""Windows of concurrent requests share the speech model's batches (the worker's window
batcher), and sharing changes no transcript: four jobs sent at once are decoded in batches
that mix their windows (the worker's Prometheus histogram of requests per batch says so), and
each job's transcript equals the one it gets alone at temperature 0."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.audio.conftest import (
    SENTENCES,
    TINY_EN,
    speech_with_pauses,
    submit_job,
    wait_job,
    words_of,
)
from tests.handlers.speech_audio import encode_audio

pytestmark = pytest.mark.timeout(900)


def batch_histogram(port: int, metric: str, le: float) -> tuple[float, float]:
    """(speech batches so far, of which those with a ``metric`` value <= ``le``) of TINY_EN:
    ``metric`` is ``requests`` (requests per batch) or ``windows`` (windows per batch)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    total = at_most = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != f"inferq_worker_speech_batch_{metric}":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != TINY_EN:
                continue
            if sample.name.endswith("_count"):
                total = sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == le:
                at_most = sample.value
    return total, at_most


def batch_requests(port: int) -> tuple[float, float]:
    """(speech batches so far, of which those with windows of one request only)."""
    return batch_histogram(port, "requests", 1.0)


def batch_windows(port: int) -> tuple[float, float]:
    """(speech batches so far, of which those of at most two windows)."""
    return batch_histogram(port, "windows", 2.0)


@pytest.fixture(scope="module")
def four_files(audio_dir, sentences):
    """Four different files of about 45 s (the sentences in another order each): with
    ``AUDIO_CHUNK_SEC`` 30 each job fans out into parts."""
    paths = []
    for seed in range(4):
        order = sentences[seed:] + sentences[:seed]
        audio = speech_with_pauses(order, 45, seed=seed)
        paths.append(encode_audio(audio, 16000, audio_dir / f"mixed{seed}.flac"))
    return paths


def times(result: dict) -> list[float]:
    return [t for s in result["segments"] for t in (s["start"], s["end"])]


def transcript(stack, path) -> dict:
    submitted = submit_job(stack, path, response_format="verbose_json", temperature="0")
    job = wait_job(stack, submitted["id"])
    assert job["status"] == "succeeded", job["error"]
    return job


def test_four_jobs_share_batches_and_keep_their_solo_transcripts(
    stack, audio_worker, worker_metrics_port, four_files
):
    solo = [transcript(stack, path)["result"] for path in four_files]
    for result in solo:
        assert len(result["text"].split()) > 40  # speech was transcribed
    before_total, before_single = batch_requests(worker_metrics_port)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs = list(pool.map(lambda path: transcript(stack, path), four_files))
    after_total, after_single = batch_requests(worker_metrics_port)
    shared = (after_total - after_single) - (before_total - before_single)
    assert after_total > before_total
    assert shared >= 1, (before_total, before_single, after_total, after_single)
    for alone, together in zip(solo, (job["result"] for job in jobs), strict=True):
        assert together["text"] == alone["text"]
        assert times(together) == pytest.approx(times(alone), abs=0.005)
    assert all(job["progress"]["chunks_total"] >= 2 for job in jobs)  # parts, not whole files


def test_one_long_job_fills_batches_with_the_windows_of_several_parts(
    stack, audio_worker, worker_metrics_port, long_flac, redis_client
):
    """A long job alone on the worker: its parts hold one window each (``AUDIO_CHUNK_SEC``
    30), yet its batches hold more than two windows (the worker keeps up to two batches of
    the job's windows in flight, not two parts), and the response has every sentence."""
    before_total, before_small = batch_windows(worker_metrics_port)
    job = wait_job(stack, submit_job(stack, long_flac)["id"])
    assert job["status"] == "succeeded", job["error"]
    after_total, after_small = batch_windows(worker_metrics_port)
    large = (after_total - after_small) - (before_total - before_small)
    assert job["progress"]["chunks_total"] >= 5  # parts, each of one window
    assert large >= 1, (before_total, before_small, after_total, after_small)
    for sentence in SENTENCES:
        assert len(words_of(job["result"]["text"]) & words_of(sentence)) >= 5
