"""Where one sync embeddings request's latency goes: ``python -m bench.latency``.

Starts the embeddings benchmark's one-worker stack (``BENCH_DTYPE``, default ``auto``), sends
``BENCH_LATENCY_RUNS`` (default 100) one-text requests one after another, then reads each
job's own timestamps from Redis (``created_at``, ``started_at``, ``finished_at``) and prints
the p50 of each leg: client -> job created (HTTP, validation, the API), created -> started
(the Celery publish, the worker's fetch and dispatch, START), started -> finished (serving:
tokenising, the batcher, the forward pass, FINISH), finished -> client (the notification, the
result read, the response). Clocks: one machine, so the legs add up to the total.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import httpx
import redis

from bench.embeddings import MODEL, bench_dtype, corpus
from bench.stack import one_worker_stack
from inferq import protocol as p

REDIS_DB = 9


def main() -> int:
    runs = int(os.environ.get("BENCH_LATENCY_RUNS", "100"))
    texts = corpus()
    worker_env = {"MODEL_DTYPE": bench_dtype()}
    with one_worker_stack(
        "latency", MODEL, port=8769, redis_db=REDIS_DB, worker_env=worker_env
    ) as stack:
        client = httpx.Client(base_url=stack.base, timeout=60)
        for text in texts[:20]:  # warm-up
            client.post("/v1/embeddings", json={"model": MODEL, "input": text}).raise_for_status()
        sent_at: dict[str, tuple[float, float]] = {}
        for i, text in enumerate(texts[:runs]):
            body = {"model": MODEL, "input": text, "encoding_format": "base64"}
            request_id = f"latency-{i}"
            sent = time.time()
            response = client.post(
                "/v1/embeddings", json=body, headers={"X-Request-ID": request_id}
            )
            sent_at[request_id] = (sent, time.time())
            response.raise_for_status()
        url = os.environ.get("BENCH_REDIS_URL", f"redis://127.0.0.1:6379/{REDIS_DB}")
        fields = [p.JobField.REQUEST_ID, p.JobField.CREATED_AT, p.JobField.STARTED_AT]
        fields.append(p.JobField.FINISHED_AT)
        jobs = {}
        store = redis.Redis.from_url(url)
        for key in store.scan_iter(p.job_key("*")):
            if store.type(key) == b"hash":
                request_id, *stamps = store.hmget(key, fields)
                if request_id and request_id.decode() in sent_at and None not in stamps:
                    jobs[request_id.decode()] = [float(v) for v in stamps]
    legs: dict[str, list[float]] = {}
    for request_id, (created, started, finished) in jobs.items():
        sent, received = sent_at[request_id]
        for name, value in (
            ("client -> created", created - sent),
            ("created -> started", started - created),
            ("started -> finished", finished - started),
            ("finished -> client", received - finished),
            ("total", received - sent),
        ):
            legs.setdefault(name, []).append(value)
    print(f"dtype {bench_dtype()}, {len(jobs)} of {runs} one-text requests, one after another")
    for name, values in legs.items():
        print(f"  {name:20s} p50 {1000 * statistics.median(values):7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
