"""One embeddings batch through the stack, looked at from inside the worker.

``python -m bench batch_probe`` with ``PROBE_LINES`` (1000) lines of 8 texts, optionally the
one-text sync sampler of ``bench.batch`` running alongside (``PROBE_SAMPLER=1``) and extra
worker settings (``PROBE_WORKER_ENV="EMBED_URGENT_LANE=0,MALLOC_ARENA_MAX=2"``). Reports the
batch's texts/s, how busy the model thread was (``inferq_worker_forward_seconds_total`` over
wall time), padded tokens per real token, the sync latency if sampled, and the worker's RSS
every 5 s. No in-process phase: compare with ``bench batch`` figures of the same session.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
from pathlib import Path

import httpx
import openai

from bench.batch import TEXTS_PER_LINE, _jsonl, _latencies, _memory_mib, _run_batch
from bench.embeddings import MODEL, corpus
from bench.stack import RESULTS, one_worker_stack

METRIC = re.compile(r"^inferq_worker_(tokens_total|forward_seconds_total)\{(.*)\} (\S+)$")


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        if m := METRIC.match(line):
            found[f"{m.group(1)}{{{m.group(2)}}}"] = float(m.group(3))
    return found


def _sum(counters: dict[str, float], name: str, label: str) -> float:
    return sum(v for k, v in counters.items() if k.startswith(name) and label in k)


def run() -> dict:
    lines = int(os.environ.get("PROBE_LINES", "1000"))
    sampled = os.environ.get("PROBE_SAMPLER") == "1"
    worker_env = dict(
        kv.split("=", 1) for kv in os.environ.get("PROBE_WORKER_ENV", "").split(",") if kv
    )
    texts = corpus(lines * TEXTS_PER_LINE, seed=1)
    metrics_port = 9109
    rss: list[float] = []
    latencies: list[float] = []
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(5):
            rss.append(round(_memory_mib(worker.pid)["rss"]))

    stack_env = {**worker_env, "WORKER_METRICS_PORT": str(metrics_port)}
    with one_worker_stack("probe", MODEL, port=8767, redis_db=9, worker_env=stack_env) as stack:
        base, worker = stack.base, stack.worker
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="bench", max_retries=0)
        threads = [threading.Thread(target=sample_rss, daemon=True)]
        if sampled:
            threads.append(
                threading.Thread(
                    target=_latencies,
                    args=(base, texts),
                    kwargs={"stop_event": done, "out": latencies},
                )
            )
        before = _scrape(metrics_port)
        for thread in threads:
            thread.start()
        try:
            wall = _run_batch(client, _jsonl(texts, lines, "probe"), lines)
        finally:
            done.set()
            for thread in threads:
                thread.join()
        after = _scrape(metrics_port)
        peak = _memory_mib(worker.pid)["peak"]
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    real = _sum(delta, "tokens_total", 'kind="input"')
    return {
        "lines": lines,
        "worker_env": worker_env,
        "sampler": sampled,
        "texts_per_s": lines * TEXTS_PER_LINE / wall,
        "wall_s": wall,
        "model_thread_busy": _sum(delta, "forward_seconds_total", 'lane="main"') / wall,
        "urgent_lane_seconds": _sum(delta, "forward_seconds_total", 'lane="urgent"'),
        "padded_per_real_token": _sum(delta, "tokens_total", 'kind="padded"') / max(real, 1),
        "sync_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "sync_requests": len(latencies),
        "worker_rss_every_5s_mib": rss,
        "worker_peak_mib": peak,
    }


def report(result: dict) -> str:
    r = result
    sync = (
        f"; sync p50 {r['sync_p50_ms']:.1f} ms over {r['sync_requests']} requests"
        if r["sampler"]
        else ""
    )
    return "\n".join(
        [
            f"{r['lines']}-line batch, worker env {r['worker_env'] or '{}'}:"
            f" {r['texts_per_s']:.1f} texts/s ({r['wall_s']:.0f} s){sync}",
            f"model thread in forward passes {r['model_thread_busy']:.1%} of the time"
            f" (urgent lane {r['urgent_lane_seconds']:.1f} s);"
            f" {r['padded_per_real_token']:.3f} padded tokens per real token",
            f"worker RSS every 5 s (MiB): {r['worker_rss_every_5s_mib']};"
            f" peak {r['worker_peak_mib']:.0f}",
        ]
    )


def results_path() -> Path:
    return RESULTS / "batch_probe.json"
