"""Where one sync request's latency goes: ``python -m bench.latency``.

``BENCH_LATENCY_SUITE``: ``embeddings`` (one text, the default) or ``rerank`` (one query
with one document, the rerank benchmark's reranker).

Starts the embeddings benchmark's one-worker stack (``BENCH_DTYPE``, default ``auto``), sends
``BENCH_LATENCY_RUNS`` (default 100) one-text requests one after another, then reads each
job's own timestamps from Redis (``created_at``, ``started_at``, ``finished_at``) and prints
the p50 of each leg: client -> job created (HTTP, validation, the API), created -> started
(the Celery publish, the worker's fetch and dispatch, START), started -> finished (serving:
tokenising, the batcher, the forward pass, FINISH), finished -> client (the notification, the
result read, the response). Clocks: one machine, so the legs add up to the total.

Before the stack starts, the same inputs go one at a time through the handler in this process
(the same dtype and batch settings): its p50 is the goal's reference (issue 14: the stack's
one-input p50 within +6 ms of it). ``BENCH_LATENCY_IN_PROCESS=0`` skips it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid

import httpx
import redis

from bench.embeddings import MODEL, bench_dtype, corpus
from bench.load import warm_timed
from bench.stack import one_worker_stack, run_on_the_workers_allocator
from inferq import protocol as p

REDIS_DB = 9


def requests(suite: str, n: int) -> tuple[str, str, list[dict], dict[str, str]]:
    """The model, route, ``n`` one-input bodies and stack environment of ``suite``."""
    if suite == "rerank":
        from bench import rerank

        bodies = [
            {"model": rerank.MODEL, "query": query, "documents": docs[:1]}
            for query, docs in rerank.workload(8 * n)
        ]
        return rerank.MODEL, "/v1/rerank", bodies, rerank.stack_env()
    bodies = [{"model": MODEL, "input": t, "encoding_format": "base64"} for t in corpus(n)]
    return MODEL, "/v1/embeddings", bodies, {}


def in_process_p50(suite: str, bodies: list[dict]) -> float:
    """Seconds, p50 of one input at a time through the handler in this process."""
    from inferq.settings import get_settings

    settings = get_settings()
    options = {
        "torch_dtype": bench_dtype(),
        "batch_tokens": settings.embed_batch_tokens,
        "max_batch_size": settings.embed_max_batch_size,
    }
    if suite == "rerank":
        from bench.rerank import weights_dir as rerank_weights
        from handlers.rerank import HFRerankModel

        handler = HFRerankModel(str(rerank_weights()), "cpu", **options)
        inputs = [[(b["query"], b["documents"][0])] for b in bodies]
        forward = handler.score
    else:
        from bench.embeddings import weights_dir
        from handlers.embedding import HFEmbeddingModel

        handler = HFEmbeddingModel(str(weights_dir()), "cpu", **options)
        inputs = [[b["input"]] for b in bodies]
        forward = handler.embed
    return statistics.median(warm_timed(lambda i: forward(inputs[i]), len(inputs)))


def main() -> int:
    run_on_the_workers_allocator()
    runs = int(os.environ.get("BENCH_LATENCY_RUNS", "100"))
    suite = os.environ.get("BENCH_LATENCY_SUITE", "embeddings")
    model, route, bodies, env = requests(suite, runs + 20)
    worker_env = {"MODEL_DTYPE": bench_dtype()}
    reference = None
    if os.environ.get("BENCH_LATENCY_IN_PROCESS", "1") != "0":
        reference = in_process_p50(suite, bodies[:runs])
    with one_worker_stack(
        "latency", model, port=8769, redis_db=REDIS_DB, env=env, worker_env=worker_env
    ) as stack:
        client = httpx.Client(base_url=stack.base, timeout=60)
        for body in bodies[runs:]:  # warm-up
            client.post(route, json=body).raise_for_status()
        sent_at: dict[str, tuple[float, float]] = {}
        run = uuid.uuid4().hex[:8]
        for i, body in enumerate(bodies[:runs]):
            request_id = f"latency-{run}-{i}"  # the database may hold earlier runs' jobs
            sent = time.time()
            response = client.post(route, json=body, headers={"X-Request-ID": request_id})
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
    print(f"{suite}, dtype {bench_dtype()}, {len(jobs)} of {runs} one-input requests in a row")
    for name, values in legs.items():
        print(f"  {name:20s} p50 {1000 * statistics.median(values):7.2f} ms")
    if reference is not None and legs:
        total = statistics.median(legs["total"])
        print(f"  {'in process':20s} p50 {1000 * reference:7.2f} ms")
        print(f"  stack - in process: {1000 * (total - reference):+.2f} ms  [goal <= +6]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
