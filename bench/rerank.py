"""Rerank benchmark: the in-process cross-encoder vs the full stack (HTTP -> queue -> worker).

The model has the shape and cost of ``cross-encoder/ms-marco-MiniLM-L-6-v2`` (a 6-layer MiniLM
BERT with a one-logit head): the offline all-MiniLM-L6-v2 encoder under a seeded head (the
Hub is out of reach here; the scores are meaningless, the work per pair is the real one).

(a) ``HFRerankModel.score`` on 2048 (query, document) pairs, length-sorted batches (the
    handler's default, and (a32) batches of 32: the issue's reference);
(b) the stack under 32 concurrent clients, each request one query with 8 documents;
(c) one query with one document, sequential: p50 via the stack vs in process.
``BENCH_DTYPE`` (default ``auto``) sets the dtype of both; ``BENCH_EMBED_TEXTS``,
``BENCH_REPEATS``, ``BENCH_SINGLE_RUNS`` shorten a run as for the embeddings suite.
"""

from __future__ import annotations

import os
import random
import statistics
from pathlib import Path

import httpx
import yaml

from bench.embeddings import ISSUE_BATCH, bench_dtype, corpus, handler_at
from bench.load import load_and_lone, load_client, percentile, timed, warm_timed
from bench.stack import RESULTS, one_worker_stack, setup_line
from inferq.devstack import ROOT

MODEL = "bench-minilm-reranker"
DOCS_PER_REQUEST = 8


def weights_dir() -> Path:
    from tests.tiny.embedding import minilm_cross_encoder_dir

    return minilm_cross_encoder_dir()


def workload(n: int) -> list[tuple[str, list[str]]]:
    """``n`` documents in requests of ``DOCS_PER_REQUEST``, each with a short query."""
    docs = corpus(n, seed=1)
    rng = random.Random(2)
    queries = [" ".join(rng.sample(d.split(), 4)).lower() + "?" for d in docs]
    return [(queries[i], docs[i : i + DOCS_PER_REQUEST]) for i in range(0, n, DOCS_PER_REQUEST)]


def in_process(requests, *, repeats: int, single_runs: int) -> dict:
    from handlers.rerank import HFRerankModel
    from inferq.settings import get_settings

    handler = handler_at(HFRerankModel, weights_dir(), get_settings().embed_max_batch_size)
    pairs = [(q, d) for q, docs in requests for d in docs]
    handler.score(pairs[:64])  # warm-up
    runs = timed(lambda _: handler.score(pairs), repeats)
    singles = warm_timed(lambda i: handler.score([pairs[i % len(pairs)]]), single_runs)
    narrow = handler_at(HFRerankModel, weights_dir(), ISSUE_BATCH)
    narrow_runs = timed(lambda _: narrow.score(pairs), repeats)
    return {
        "dtype": str(handler.dtype).removeprefix("torch."),
        "pairs_per_s": len(pairs) / statistics.median(runs),
        "pairs_per_s_batches_of_32": len(pairs) / statistics.median(narrow_runs),
        "one_pair_p50_ms": 1000 * statistics.median(singles),
    }


def _bodies(requests) -> list[dict]:
    return [
        {"model": MODEL, "query": query, "documents": docs, "return_documents": False}
        for query, docs in requests
    ]


def stack_env() -> dict[str, str]:
    """The environment of a stack whose catalog serves the benchmark's reranker."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    catalog = RESULTS / "rerank-catalog"
    catalog.mkdir(exist_ok=True)
    (catalog / "models.yaml").write_text((ROOT / "models.yaml").read_text())
    entry = {
        "name": MODEL,
        "hf_repo_id": "inferq-bench/minilm-cross-encoder",
        "handler": "handlers.rerank.HFRerankModel",
        "local_dir": str(weights_dir()),
    }
    (catalog / "models.local.yaml").write_text(yaml.safe_dump({"models": [entry]}))
    return {"MODEL_CONFIG_PATH": str(catalog / "models.yaml")}


def through_stack(requests, *, clients: int, repeats: int, single_runs: int) -> dict:
    with one_worker_stack(
        "rerank",
        MODEL,
        port=8767,
        redis_db=9,
        env=stack_env(),
        worker_env={"MODEL_DTYPE": bench_dtype()},
    ) as stack:
        served = {m["id"]: m for m in httpx.get(f"{stack.base}/v1/models").json()["data"]}
        bodies = _bodies(requests)

        def one(client: httpx.Client, i: int) -> None:
            query, docs = requests[i % len(requests)]
            body = {"model": MODEL, "query": query, "documents": docs[:1]}
            client.post("/v1/rerank", json=body).raise_for_status()

        run = load_and_lone(
            stack.base,
            "/v1/rerank",
            MODEL,
            bodies,
            bodies[:32],
            clients=clients,
            repeats=repeats,
            lone=one,
            lone_runs=single_runs,
        )
        allocator = stack.worker_allocator()
    pairs = sum(len(docs) for _, docs in requests)
    return {
        "dtype": served[MODEL].get("dtype"),
        "worker_allocator": allocator,
        "pairs_per_s": pairs / run.wall_s,
        "one_pair_p50_ms": 1000 * statistics.median(run.lone),
        "one_pair_p99_ms": 1000 * percentile(run.lone, 0.99),
        "one_pair_after_load_p50_ms": 1000 * statistics.median(run.lone_after),
        "clients": clients,
        "client": load_client(),
        "client_cpu_share": run.client_cpu_share,
        "jobs_per_message": run.jobs_per_message,
    }


def run() -> dict:
    requests = workload(int(os.environ.get("BENCH_EMBED_TEXTS", "2048")))
    runs = {
        "repeats": int(os.environ.get("BENCH_REPEATS", "3")),
        "single_runs": int(os.environ.get("BENCH_SINGLE_RUNS", "200")),
    }
    local = in_process(requests, **runs)
    stack = through_stack(requests, clients=32, **runs)
    return {
        "model": "MiniLM-L6 cross-encoder (ms-marco-MiniLM-L-6-v2 shape)",
        "documents_per_request": DOCS_PER_REQUEST,
        "a_in_process": local,
        "b_c_stack": stack,
        "b_over_a": stack["pairs_per_s"] / local["pairs_per_s"],
        "b_over_a32": stack["pairs_per_s"] / local["pairs_per_s_batches_of_32"],
        "c_added_p50_ms": stack["one_pair_p50_ms"] - local["one_pair_p50_ms"],
    }


def report(result: dict) -> str:
    a, s = result["a_in_process"], result["b_c_stack"]
    return "\n".join(
        [
            setup_line(a, s, result["machine"]),
            f"(a) in-process cross-encoder: {a['pairs_per_s']:8.1f} pairs/s",
            f"(b) stack, {s['clients']} clients x {result['documents_per_request']} documents"
            f" ({s['client']}, {100 * s['client_cpu_share']:.0f} % of a core):"
            f" {s['pairs_per_s']:8.1f} pairs/s -> {result['b_over_a']:.3f} x (a)"
            "  [goal >= 0.75]" + _per_message(s),
            f"(a32) in process, sorted batches of {ISSUE_BATCH} (the issue's reference):"
            f" {a['pairs_per_s_batches_of_32']:8.1f} pairs/s;"
            f" (b) / (a32) = {result['b_over_a32']:.3f}",
            f"(c) one pair p50: in process {a['one_pair_p50_ms']:.2f} ms, stack"
            f" {s['one_pair_p50_ms']:.2f} ms (p99 {s['one_pair_p99_ms']:.2f})"
            f" -> adds {result['c_added_p50_ms']:.2f} ms  [goal <= 6];"
            f" right after the load {s['one_pair_after_load_p50_ms']:.2f} ms",
        ]
    )


def results_path() -> Path:
    return ROOT / "bench" / "results" / "rerank.json"


def _per_message(stack: dict) -> str:
    per = stack.get("jobs_per_message")
    return f"; {per:.2f} jobs per message" if per else ""
