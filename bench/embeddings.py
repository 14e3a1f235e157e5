"""Embedding benchmark: in-process handler vs the full stack (HTTP -> queue -> worker).

(a) handler throughput on a fixed corpus of 2048 sentences of 12-48 words (its default
    batches of up to 128, and (a32) length-sorted batches of 32: the issue's reference);
(b) the stack under 32 concurrent clients sending 8 texts each, same corpus;
(c) p50/p99 latency of a one-text sync request vs the in-process time for one text;
(d) the Infinity peer (bench/peer.py) under the same load, where it is installed.

Every figure runs at one dtype: ``BENCH_DTYPE`` (default ``auto``, what the worker picks:
handlers/dtype.py); the worker gets it as ``MODEL_DTYPE``, Infinity as ``--dtype``.
"""

from __future__ import annotations

import os
import random
import statistics
from pathlib import Path

import httpx

from bench.load import load_and_lone, load_client, percentile, timed, warm_timed
from bench.peer import infinity, infinity_bin
from bench.stack import RESULTS, one_worker_stack, setup_line
from inferq.devstack import ROOT

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Issue 14 measured its in-process limit in length-sorted batches of 32; (a) is the handler's
# own default (EMBED_MAX_BATCH_SIZE, 128), a stricter reference: the bench reports both.
ISSUE_BATCH = 32
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


def bench_dtype() -> str:
    return os.environ.get("BENCH_DTYPE", "auto")


def weights_dir() -> Path:
    from inferq.catalog import load_catalog

    return load_catalog(ROOT / "models.yaml").get(MODEL).weights_dir()


def handler_at(cls, weights: Path, max_batch_size: int):
    """``cls`` (the embedding or rerank handler) on ``weights`` at the bench's dtype, with the
    worker's token budget and passes of at most ``max_batch_size`` inputs."""
    from inferq.settings import get_settings

    return cls(
        str(weights),
        "cpu",
        torch_dtype=bench_dtype(),
        batch_tokens=get_settings().embed_batch_tokens,
        max_batch_size=max_batch_size,
    )


def in_process(texts: list[str], *, repeats: int = 3, single_runs: int = 200) -> dict:
    from handlers.embedding import HFEmbeddingModel
    from inferq.settings import get_settings

    handler = handler_at(HFEmbeddingModel, weights_dir(), get_settings().embed_max_batch_size)
    handler.embed(texts[:64])  # warm-up
    runs = timed(lambda _: handler.embed(texts), repeats)
    singles = warm_timed(lambda i: handler.embed([texts[i % len(texts)]]), single_runs)
    narrow = handler_at(HFEmbeddingModel, weights_dir(), ISSUE_BATCH)  # the issue's reference
    narrow_runs = timed(lambda _: narrow.embed(texts), repeats)
    lanes_runs = timed(lambda _: on_lanes(handler.embed, texts), repeats)
    return {
        "dtype": str(handler.dtype).removeprefix("torch."),
        "texts_per_s": len(texts) / statistics.median(runs),
        "texts_per_s_batches_of_32": len(texts) / statistics.median(narrow_runs),
        "texts_per_s_lanes": len(texts) / statistics.median(lanes_runs),
        "lanes": lanes(),
        "one_text_p50_ms": 1000 * statistics.median(singles),
        "one_text_p99_ms": 1000 * percentile(singles, 0.99),
    }


def lanes() -> int:
    return len(os.sched_getaffinity(0))


def on_lanes(call, items: list) -> None:
    """``call`` over ``items`` split in ``lanes()`` interleaved shares, one thread each, on one
    torch thread each (the in-process form of ``EMBED_LANES`` = cores, ``TORCH_THREADS=1``)."""
    import threading

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        count = lanes()
        workers = [
            threading.Thread(target=call, args=(items[lane::count],)) for lane in range(count)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        torch.set_num_threads(threads)


def _bodies(texts: list[str], per_request: int, model: str) -> list[dict]:
    return [
        {"model": model, "input": texts[i : i + per_request], "encoding_format": "base64"}
        for i in range(0, len(texts), per_request)
    ]


def through_stack(
    texts: list[str],
    *,
    clients: int = 32,
    per_request: int = 8,
    repeats: int = 3,
    single_runs: int = 200,
) -> dict:
    worker_env = {"MODEL_DTYPE": bench_dtype()}
    if threads := os.environ.get("BENCH_WORKER_TORCH_THREADS"):
        worker_env["TORCH_THREADS"] = threads
    with one_worker_stack(
        "embeddings", MODEL, port=8765, redis_db=9, worker_env=worker_env
    ) as stack:
        served = {m["id"]: m for m in httpx.get(f"{stack.base}/v1/models").json()["data"]}
        figures = _drive(stack.base, texts, clients, per_request, repeats, single_runs)
        allocator = stack.worker_allocator()
    return {"dtype": served[MODEL].get("dtype"), "worker_allocator": allocator, **figures}


def through_infinity(
    texts: list[str],
    dtype: str,
    *,
    clients: int = 32,
    per_request: int = 8,
    repeats: int = 3,
    single_runs: int = 200,
) -> dict:
    """The same load against Infinity serving the same weights at ``dtype``."""
    port = int(os.environ.get("BENCH_INFINITY_PORT", "8766"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with infinity(
        weights_dir(), dtype=dtype, port=port, log_path=RESULTS / "embeddings-infinity.log"
    ) as base:
        figures = _drive(
            base,
            texts,
            clients,
            per_request,
            repeats,
            single_runs,
            path="/embeddings",
            model="minilm",
        )
    return {"dtype": dtype, **figures}


def _drive(
    base: str,
    texts: list[str],
    clients: int,
    per_request: int,
    repeats: int,
    single_runs: int,
    *,
    path: str = "/v1/embeddings",
    model: str = MODEL,
) -> dict:
    """Throughput of ``clients`` x ``per_request`` texts (median of ``repeats``), and one-text
    latency over ``single_runs`` sequential requests before the load and right after it."""

    def one(client: httpx.Client, i: int) -> None:
        body = {"model": model, "input": texts[i % len(texts)], "encoding_format": "base64"}
        client.post(path, json=body).raise_for_status()

    run = load_and_lone(
        base,
        path,
        model,
        _bodies(texts, per_request, model),
        _bodies(texts[:256], per_request, model),
        clients=clients,
        repeats=repeats,
        lone=one,
        lone_runs=single_runs,
    )
    return {
        "texts_per_s": len(texts) / run.wall_s,
        "one_text_p50_ms": 1000 * statistics.median(run.lone),
        "one_text_p99_ms": 1000 * percentile(run.lone, 0.99),
        "one_text_after_load_p50_ms": 1000 * statistics.median(run.lone_after),
        "one_text_after_load_p99_ms": 1000 * percentile(run.lone_after, 0.99),
        "clients": clients,
        "client": load_client(),
        "client_cpu_share": run.client_cpu_share,
        "texts_per_request": per_request,
        "jobs_per_message": run.jobs_per_message,
    }


def run() -> dict:
    # shorter runs on a busy machine: BENCH_EMBED_TEXTS / BENCH_REPEATS / BENCH_SINGLE_RUNS
    texts = corpus(int(os.environ.get("BENCH_EMBED_TEXTS", "2048")))
    runs = {
        "repeats": int(os.environ.get("BENCH_REPEATS", "3")),
        "single_runs": int(os.environ.get("BENCH_SINGLE_RUNS", "200")),
    }
    local = in_process(texts, **runs)
    stack = through_stack(texts, **runs)
    result = {
        "corpus": {"sentences": len(texts), "words": "12-48", "model": MODEL},
        "dtype": local["dtype"],
        "a_in_process": local,
        "b_c_stack": stack,
        "b_over_a": stack["texts_per_s"] / local["texts_per_s"],
        "b_over_a32": stack["texts_per_s"] / local["texts_per_s_batches_of_32"],
        "b_over_al": stack["texts_per_s"] / local["texts_per_s_lanes"],
        "c_added_p50_ms": stack["one_text_p50_ms"] - local["one_text_p50_ms"],
        "c_added_after_load_p50_ms": stack["one_text_after_load_p50_ms"] - local["one_text_p50_ms"],
    }
    if infinity_bin() is not None:
        peer = through_infinity(texts, local["dtype"], **runs)
        result["d_infinity"] = peer
        result["b_over_d"] = stack["texts_per_s"] / peer["texts_per_s"]
        result["d_over_a"] = peer["texts_per_s"] / local["texts_per_s"]
    return result


def report(result: dict) -> str:
    a, s = result["a_in_process"], result["b_c_stack"]
    load = (
        f"stack, {s['clients']} clients x {s['texts_per_request']} texts"
        f" ({s['client']}, {100 * s['client_cpu_share']:.0f} % of a core)"
    )
    lines = [
        setup_line(a, s, result["machine"]),
        f"(a) in-process handler: {a['texts_per_s']:8.1f} texts/s",
        f"(b) {load}: {s['texts_per_s']:8.1f} texts/s"
        f" -> {result['b_over_a']:.3f} x (a)  [goal >= 0.75]" + _per_message(s),
        f"(a32) in process, sorted batches of {ISSUE_BATCH} (the issue's reference):"
        f" {a['texts_per_s_batches_of_32']:8.1f} texts/s; (b) / (a32) = {result['b_over_a32']:.3f}",
        f"(aL) in process, {a['lanes']} lanes of one torch thread:"
        f" {a['texts_per_s_lanes']:8.1f} texts/s; (b) / (aL) = {result['b_over_al']:.3f}",
        f"(c) one text in-process: p50 {a['one_text_p50_ms']:6.2f} ms"
        f"  p99 {a['one_text_p99_ms']:6.2f} ms",
        f"    one text via stack:  p50 {s['one_text_p50_ms']:6.2f} ms"
        f"  p99 {s['one_text_p99_ms']:6.2f} ms"
        f" -> adds {result['c_added_p50_ms']:.2f} ms at p50  [goal <= 6]",
        f"    right after the load: p50 {s['one_text_after_load_p50_ms']:6.2f} ms"
        f"  p99 {s['one_text_after_load_p99_ms']:6.2f} ms"
        f" -> adds {result['c_added_after_load_p50_ms']:.2f} ms",
    ]
    if (d := result.get("d_infinity")) is not None:
        lines += [
            f"(d) Infinity ({d['dtype']}), same load: {d['texts_per_s']:8.1f} texts/s"
            f" = {result['d_over_a']:.3f} x (a); (b) / (d) = {result['b_over_d']:.3f}"
            "  [goal >= 1.1]",
            f"    one text via Infinity: p50 {d['one_text_p50_ms']:6.2f} ms"
            f"  p99 {d['one_text_p99_ms']:6.2f} ms; right after the load"
            f" p50 {d['one_text_after_load_p50_ms']:6.2f} ms",
        ]
    else:
        lines.append("(d) Infinity: not installed (see bench/peer.py), skipped")
    return "\n".join(lines)


def results_path() -> Path:
    return ROOT / "bench" / "results" / "embeddings.json"


def _per_message(stack: dict) -> str:
    per = stack.get("jobs_per_message")
    return f"; {per:.2f} jobs per message" if per else ""
