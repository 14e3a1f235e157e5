"""Worker metrics: Prometheus on a per-worker port, plus job counters aggregated in Redis.

The per-worker endpoint (``WORKER_METRICS_PORT``; the worker is one process, the threads pool,
so the default registry is exact) has job durations, queue waits, batch sizes, tokens and
model load times. Finished-job counts also go to the Redis hash ``inferq:stats:jobs`` (the
finish script counts them), so the API's ``/metrics`` shows jobs by status across every worker
without scraping them all.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

JOB_SECONDS = Histogram(
    "inferq_worker_job_duration_seconds",
    "Time from a job's start on this worker to its outcome.",
    ["model", "endpoint", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
QUEUE_WAIT = Histogram(
    "inferq_worker_queue_wait_seconds",
    "Time a job waited between creation and its start.",
    ["model", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300),
)
BATCH_SIZE = Histogram(
    "inferq_worker_batch_size",
    "Inputs per forward pass of the cross-job batcher.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
SPEECH_BATCH_WINDOWS = Histogram(
    "inferq_worker_speech_batch_windows",
    "Windows per batch of a speech model's window batcher.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32),
)
SPEECH_BATCH_REQUESTS = Histogram(
    "inferq_worker_speech_batch_requests",
    "Requests (sync requests, jobs, parts of long jobs) whose windows shared one speech batch.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32),
)
TOKENS = Counter(
    "inferq_worker_tokens_total",
    "Tokens processed (kind 'padded': the batcher's passes counted with their padding).",
    ["model", "kind"],
)
FORWARD_SECONDS = Counter(
    "inferq_worker_forward_seconds_total",
    "Time the batcher's model threads spent in forward passes (against wall time: how busy "
    "the model is).",
    ["model", "lane"],
)
LOAD_SECONDS = Gauge("inferq_worker_model_load_seconds", "Time to load a model.", ["model"])
FROZEN_OBJECTS = Gauge(
    "inferq_worker_frozen_objects",
    "Start-up objects kept out of the garbage collector's passes (gc.freeze; inferq/heap.py).",
)

ALLOCATOR = Gauge(
    "inferq_worker_allocator_info",
    "1 for the memory allocator the worker runs on (WORKER_MALLOC; workers/native_env.py).",
    ["allocator"],
)


def start_server(port: int) -> None:
    if port:
        start_http_server(port)
        log.info("worker metrics on :%d/metrics", port)


def record_job(
    *, model: str, endpoint: str, status: str, seconds: float, waited: float | None
) -> None:
    """A job's duration and queue wait (the Redis counter of finished jobs is kept by the
    finish script, in the same round trip as the outcome)."""
    JOB_SECONDS.labels(model, endpoint, status).observe(seconds)
    if waited is not None:
        QUEUE_WAIT.labels(model, endpoint).observe(max(0.0, waited))
