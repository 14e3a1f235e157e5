"""Batch API benchmark: a 10 000-line embeddings batch (8 texts a line) end to end.

(a) in-process handler throughput on the same 80 000 texts;
(b) the batch through the stack, alone: upload, create, poll to completed (texts/s from
    creation to completion), with the official openai client;
(c) one-text sync latency, idle vs while a batch runs (p50/p99, one request every 0.25 s), on
    a second batch of the first ``BENCH_BUSY_LINES`` lines, whose own texts/s under that
    interactive traffic is reported too;
(m) peak resident memory of the API and the worker against their size before the batches, and
    the input file's size (both stream: neither holds the file).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import threading
import time
from pathlib import Path

import httpx
import openai

from bench.embeddings import MODEL, corpus, in_process
from bench.load import percentile
from bench.stack import RESULTS, one_worker_stack

LINES = int(os.environ.get("BENCH_BATCH_LINES", "10000"))
BUSY_LINES = int(os.environ.get("BENCH_BUSY_LINES", "2000"))
TEXTS_PER_LINE = 8
TERMINAL = ("completed", "failed", "cancelled", "expired")


def _latencies(
    base: str,
    texts: list[str],
    *,
    stop_event: threading.Event,
    out: list[float],
    limit: int | None = None,
) -> None:
    with httpx.Client(base_url=base, timeout=120) as client:
        i = 0
        while not stop_event.is_set() and (limit is None or i < limit):
            started = time.perf_counter()
            client.post(
                "/v1/embeddings",
                json={"model": MODEL, "input": texts[i % len(texts)], "encoding_format": "base64"},
            ).raise_for_status()
            out.append(time.perf_counter() - started)
            i += 1
            time.sleep(0.25)


def _memory_mib(pid: int) -> dict[str, float]:
    """Current and peak resident set of a process (Linux /proc), in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"]}


def _jsonl(texts: list[str], lines: int, prefix: str) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"{prefix}-{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {
                    "model": MODEL,
                    "input": texts[i * TEXTS_PER_LINE : (i + 1) * TEXTS_PER_LINE],
                    "encoding_format": "base64",
                },
            }
        ).encode()
        + b"\n"
        for i in range(lines)
    )


def _run_batch(client: openai.OpenAI, payload: bytes, lines: int) -> float:
    """Upload, create, poll to the end; seconds from creation to completion."""
    upload = client.files.create(file=("bench.jsonl", io.BytesIO(payload)), purpose="batch")
    started = time.perf_counter()
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    while (batch := client.batches.retrieve(batch.id)).status not in TERMINAL:
        time.sleep(0.5)
    wall = time.perf_counter() - started
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == lines
    return wall


def run() -> dict:
    texts = corpus(LINES * TEXTS_PER_LINE, seed=1)
    local = in_process(texts, repeats=1, single_runs=50)

    with one_worker_stack("batch", MODEL, port=8766, redis_db=9) as stack:
        base, api, worker = stack.base, stack.api, stack.worker
        idle: list[float] = []
        _latencies(base, texts, stop_event=threading.Event(), out=idle, limit=60)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="bench", max_retries=0)
        before = {"api": _memory_mib(api.pid), "worker": _memory_mib(worker.pid)}
        payload = _jsonl(texts, LINES, "line")
        wall = _run_batch(client, payload, LINES)

        busy_lines = min(BUSY_LINES, LINES)
        busy: list[float] = []
        stop_event = threading.Event()
        sampler = threading.Thread(
            target=_latencies, args=(base, texts), kwargs={"stop_event": stop_event, "out": busy}
        )
        sampler.start()
        busy_wall = _run_batch(client, _jsonl(texts, busy_lines, "busy"), busy_lines)
        stop_event.set()
        sampler.join()
        after = {"api": _memory_mib(api.pid), "worker": _memory_mib(worker.pid)}
    stack_rate = LINES * TEXTS_PER_LINE / wall
    busy_rate = busy_lines * TEXTS_PER_LINE / busy_wall
    return {
        "lines": LINES,
        "texts": LINES * TEXTS_PER_LINE,
        "a_in_process_texts_per_s": local["texts_per_s"],
        "b_batch_texts_per_s": stack_rate,
        "b_over_a": stack_rate / local["texts_per_s"],
        "batch_wall_s": wall,
        "busy_lines": busy_lines,
        "c_batch_texts_per_s_with_sync_traffic": busy_rate,
        "c_batch_over_a_with_sync_traffic": busy_rate / local["texts_per_s"],
        "c_idle_p50_ms": 1000 * statistics.median(idle),
        "c_idle_p99_ms": 1000 * percentile(idle, 0.99),
        "c_busy_p50_ms": 1000 * statistics.median(busy),
        "c_busy_p99_ms": 1000 * percentile(busy, 0.99),
        "c_busy_over_idle_p50": statistics.median(busy) / statistics.median(idle),
        "busy_samples": len(busy),
        "m_input_file_mib": len(payload) / 2**20,
        "m_api_rss_before_mib": before["api"]["rss"],
        "m_api_peak_before_mib": before["api"]["peak"],
        "m_api_peak_mib": after["api"]["peak"],
        "m_worker_rss_before_mib": before["worker"]["rss"],
        "m_worker_peak_before_mib": before["worker"]["peak"],
        "m_worker_peak_mib": after["worker"]["peak"],
    }


def report(result: dict) -> str:
    r = result
    return "\n".join(
        [
            f"(a) in-process handler, {r['texts']} texts:"
            f" {r['a_in_process_texts_per_s']:8.1f} texts/s",
            f"(b) {r['lines']}-line batch end to end:   {r['b_batch_texts_per_s']:8.1f} texts/s"
            f" ({r['batch_wall_s']:.0f} s) -> {r['b_over_a']:.3f} x (a)  [goal >= 0.95]",
            f"(c) one-text sync latency idle: p50 {r['c_idle_p50_ms']:.1f} ms"
            f" p99 {r['c_idle_p99_ms']:.1f} ms;"
            f" during the batch: p50 {r['c_busy_p50_ms']:.1f} ms p99 {r['c_busy_p99_ms']:.1f} ms"
            f" -> {r['c_busy_over_idle_p50']:.1f} x  [goal <= 2]",
            f"    ({r['busy_lines']}-line batch under that traffic:"
            f" {r['c_batch_texts_per_s_with_sync_traffic']:.1f} texts/s ="
            f" {r['c_batch_over_a_with_sync_traffic']:.3f} x (a))",
            f"(m) input file {r['m_input_file_mib']:.1f} MiB; RSS before the batches -> peak"
            f" after: API {r['m_api_rss_before_mib']:.0f} -> {r['m_api_peak_mib']:.0f} MiB,"
            f" worker {r['m_worker_rss_before_mib']:.0f} -> {r['m_worker_peak_mib']:.0f} MiB"
            f" (its peak before: {r['m_worker_peak_before_mib']:.0f} MiB)",
        ]
    )


def results_path():
    return RESULTS / "batch.json"
