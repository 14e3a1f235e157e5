"""Embedding benchmark: in-process handler vs the full stack (HTTP -> queue -> worker).

(a) handler throughput on a fixed corpus of 2048 sentences of 12-48 words;
(b) the stack under 32 concurrent clients sending 8 texts each, same corpus;
(c) p50/p99 latency of a one-text sync request vs the in-process time for one text.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from pathlib import Path

import httpx

from bench.stack import one_worker_stack
from inferq.devstack import ROOT

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
WORDS = (  # noqa: SIM905 - a word list is easier to read as text
    "time person year way day thing man world life hand part child eye woman place work "
    "week case point government company number group problem fact be have do say get make "
    "go know take see come think look want give use find tell ask seem feel try leave call "
    "good new first last long great little own other old right big high different small "
    "large next early young important few public bad same able model data queue worker "
    "request batch"
).split()


def corpus(n: int = 2048, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 48))).capitalize() + "."
        for _ in range(n)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def in_process(texts: list[str], *, repeats: int = 3, single_runs: int = 200) -> dict:
    from handlers.embedding import HFEmbeddingModel
    from inferq.catalog import load_catalog
    from inferq.settings import get_settings

    settings = get_settings()
    entry = load_catalog(ROOT / "models.yaml").get(MODEL)
    handler = HFEmbeddingModel(
        str(entry.weights_dir()),
        "cpu",
        batch_tokens=settings.embed_batch_tokens,
        max_batch_size=settings.embed_max_batch_size,
    )
    handler.embed(texts[:64])  # warm-up
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        handler.embed(texts)
        runs.append(time.perf_counter() - started)
    singles = []
    for i in range(single_runs):
        started = time.perf_counter()
        handler.embed([texts[i % len(texts)]])
        singles.append(time.perf_counter() - started)
    return {
        "texts_per_s": len(texts) / statistics.median(runs),
        "one_text_p50_ms": 1000 * statistics.median(singles),
        "one_text_p99_ms": 1000 * percentile(singles, 0.99),
    }


async def _throughput(base: str, texts: list[str], clients: int, per_request: int) -> float:
    requests = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue = asyncio.Queue()
    for chunk in requests:
        queue.put_nowait(chunk)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                chunk = queue.get_nowait()
                response = await client.post(
                    "/v1/embeddings",
                    json={"model": MODEL, "input": chunk, "encoding_format": "base64"},
                )
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started


def through_stack(
    texts: list[str],
    *,
    clients: int = 32,
    per_request: int = 8,
    repeats: int = 3,
    single_runs: int = 200,
) -> dict:
    worker_env = {}
    if threads := os.environ.get("BENCH_WORKER_TORCH_THREADS"):
        worker_env["TORCH_THREADS"] = threads
    with one_worker_stack(
        "embeddings", MODEL, port=8765, redis_db=9, worker_env=worker_env
    ) as stack:
        base = stack.base
        asyncio.run(_throughput(base, texts[:256], clients, per_request))  # warm-up
        walls = [
            asyncio.run(_throughput(base, texts, clients, per_request)) for _ in range(repeats)
        ]
        singles = []
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(single_runs):
                started = time.perf_counter()
                client.post(
                    "/v1/embeddings",
                    json={
                        "model": MODEL,
                        "input": texts[i % len(texts)],
                        "encoding_format": "base64",
                    },
                ).raise_for_status()
                singles.append(time.perf_counter() - started)
    return {
        "texts_per_s": len(texts) / statistics.median(walls),
        "one_text_p50_ms": 1000 * statistics.median(singles),
        "one_text_p99_ms": 1000 * percentile(singles, 0.99),
        "clients": clients,
        "texts_per_request": per_request,
    }


def run() -> dict:
    texts = corpus()
    local = in_process(texts)
    stack = through_stack(texts)
    return {
        "corpus": {"sentences": len(texts), "words": "12-48", "model": MODEL},
        "a_in_process": local,
        "b_c_stack": stack,
        "b_over_a": stack["texts_per_s"] / local["texts_per_s"],
        "c_added_p50_ms": stack["one_text_p50_ms"] - local["one_text_p50_ms"],
    }


def report(result: dict) -> str:
    a, s = result["a_in_process"], result["b_c_stack"]
    load = f"stack, {s['clients']} clients x {s['texts_per_request']} texts"
    return "\n".join(
        [
            f"(a) in-process handler: {a['texts_per_s']:8.1f} texts/s",
            f"(b) {load}: {s['texts_per_s']:8.1f} texts/s"
            f" -> {result['b_over_a']:.3f} x (a)  [goal >= 0.95]",
            f"(c) one text in-process: p50 {a['one_text_p50_ms']:6.2f} ms"
            f"  p99 {a['one_text_p99_ms']:6.2f} ms",
            f"    one text via stack:  p50 {s['one_text_p50_ms']:6.2f} ms"
            f"  p99 {s['one_text_p99_ms']:6.2f} ms"
            f" -> adds {result['c_added_p50_ms']:.2f} ms at p50  [goal <= 6]",
        ]
    )


def results_path() -> Path:
    return ROOT / "bench" / "results" / "embeddings.json"
