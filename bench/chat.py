"""Chat benchmark (SmolLM2-135M, greedy, CPU): in-process handler vs the full stack.

(a) one stream: tokens/s and time to first token of ``handler.generate`` vs one streamed
    ``/v1/chat/completions`` request (HTTP -> queue -> worker -> Redis stream -> SSE);
(b) eight streams: aggregate tokens/s of ``handler.generate_batch`` on 8 prompts vs 8
    concurrent streamed requests (which the worker batches continuously);
(c) a batch file of 32 prompts through the Batch API (``client.batches``): tokens/s from
    creation to completion vs ``handler.generate_batch`` on the same 32 prompts, and the time
    to first token of one interactive stream while the batch runs vs idle.

Both sides decode the same prompts greedily with the same ``max_tokens``, so they produce the
same tokens. Goals (issue 3): (a) >= 0.95x with TTFT <= +15 ms; (b) >= 0.85x.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import httpx

from bench.stack import one_worker_stack
from inferq.devstack import ROOT

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MAX_TOKENS = 64
REPEATS = 3
BATCH_PROMPTS = 32
TOPICS = [
    "a dragon and a knight",
    "a lighthouse keeper",
    "a robot learning to paint",
    "two rival bakers",
    "a lost city under the sea",
    "a detective cat",
    "a journey across the desert",
    "the first colony on Mars",
]


def messages(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Write a long story about {topic}."}]


def batch_topics() -> list[str]:
    return [f"{TOPICS[i % len(TOPICS)]}, chapter {i}" for i in range(BATCH_PROMPTS)]


def in_process() -> dict:
    from handlers.chat import ChatRequest, TextChatModel
    from inferq.catalog import load_catalog

    entry = load_catalog(ROOT / "models.yaml").get(MODEL)
    dtype = os.environ.get("BENCH_CHAT_DTYPE", entry.torch_dtype)  # the catalog's by default
    handler = TextChatModel(
        str(entry.weights_dir()), "cpu", gguf_file=entry.gguf_file, torch_dtype=dtype
    )

    def one(topic: str) -> tuple[float, float, int]:
        first: list[float] = []
        started = time.perf_counter()
        result = handler.generate(
            messages(topic),
            max_new_tokens=MAX_TOKENS,
            temperature=0.0,
            top_p=1.0,
            on_text=lambda _: first or first.append(time.perf_counter()),
        )
        wall = time.perf_counter() - started
        return result.completion_tokens / wall, first[0] - started, result.completion_tokens

    one(TOPICS[0])  # warm-up
    singles = [one(TOPICS[0]) for _ in range(REPEATS)]
    batches = []
    for _ in range(REPEATS):
        requests = [ChatRequest(messages=messages(t), max_new_tokens=MAX_TOKENS) for t in TOPICS]
        started = time.perf_counter()
        results = handler.generate_batch(requests)
        wall = time.perf_counter() - started
        batches.append(sum(r.completion_tokens for r in results) / wall)
    requests = [
        ChatRequest(messages=messages(t), max_new_tokens=MAX_TOKENS) for t in batch_topics()
    ]
    started = time.perf_counter()
    results = handler.generate_batch(requests)
    file_tokens_per_s = sum(r.completion_tokens for r in results) / (time.perf_counter() - started)
    return {
        "single_tokens_per_s": statistics.median(s[0] for s in singles),
        "single_ttft_ms": 1000 * statistics.median(s[1] for s in singles),
        "single_tokens": singles[0][2],
        "batch8_tokens_per_s": statistics.median(batches),
        "batch_file_tokens_per_s": file_tokens_per_s,
        "dtype": str(handler.dtype).removeprefix("torch."),
    }


async def _stream(client: httpx.AsyncClient, topic: str) -> tuple[float, float, int]:
    """One streamed request: (tokens/s, time to first content, completion tokens)."""
    body = {
        "model": MODEL,
        "messages": messages(topic),
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first = None
    tokens = 0
    started = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(
                f"HTTP {response.status_code} (job {response.headers.get('x-job-id')}): "
                f"{response.text}"
            )
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    wall = time.perf_counter() - started
    return tokens / wall, (first or started) - started, tokens


async def _streams(base: str, topics: list[str]) -> list[tuple[float, float, int]]:
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        return await asyncio.gather(*(_stream(client, t) for t in topics))


def through_stack() -> dict:
    stack_args = {"port": 8766, "redis_db": 14, "log_level": "INFO", "ready_timeout": 300}
    with one_worker_stack("chat", MODEL, **stack_args) as stack:
        base = stack.base
        asyncio.run(_streams(base, TOPICS[:1]))  # warm-up
        singles = [asyncio.run(_streams(base, TOPICS[:1]))[0] for _ in range(REPEATS)]
        batches = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            results = asyncio.run(_streams(base, TOPICS))
            wall = time.perf_counter() - started
            batches.append(sum(r[2] for r in results) / wall)
        batch_file = _batch_file(base)
    return {
        "single_tokens_per_s": statistics.median(s[0] for s in singles),
        "single_ttft_ms": 1000 * statistics.median(s[1] for s in singles),
        "single_tokens": singles[0][2],
        "streams8_tokens_per_s": statistics.median(batches),
        **batch_file,
    }


def _batch_file(base: str) -> dict:
    """(c): the 32-prompt batch file, with interactive streams measured while it runs."""
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    lines = [
        {
            "custom_id": f"p{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": messages(t),
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
            },
        }
        for i, t in enumerate(batch_topics())
    ]
    payload = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.create(file=("prompts.jsonl", payload), purpose="batch")
    started = time.perf_counter()
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while client.batches.retrieve(batch.id).status == "validating":
        time.sleep(0.05)
    time.sleep(1.0)  # the batch's rows are decoding
    during = []
    while (batch := client.batches.retrieve(batch.id)).status == "in_progress":
        during.append(asyncio.run(_streams(base, TOPICS[:1]))[0][1])
    wall = time.perf_counter() - started
    if batch.status != "completed":
        raise RuntimeError(f"batch ended {batch.status}: {batch}")
    outputs = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    tokens = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in outputs)
    return {
        "batch_file_tokens_per_s": tokens / wall,
        "batch_file_lines": len(outputs),
        "ttft_during_batch_ms": 1000 * statistics.median(during) if during else None,
        "streams_during_batch": len(during),
    }


def run() -> dict:
    local = in_process()
    stack = through_stack()
    return {
        "setup": {"model": MODEL, "max_tokens": MAX_TOKENS, "greedy": True, "repeats": REPEATS},
        "in_process": local,
        "stack": stack,
        "single_ratio": stack["single_tokens_per_s"] / local["single_tokens_per_s"],
        "ttft_added_ms": stack["single_ttft_ms"] - local["single_ttft_ms"],
        "eight_ratio": stack["streams8_tokens_per_s"] / local["batch8_tokens_per_s"],
        "batch_file_ratio": stack["batch_file_tokens_per_s"] / local["batch_file_tokens_per_s"],
    }


def report(result: dict) -> str:
    a, s = result["in_process"], result["stack"]
    return "\n".join(
        [
            f"(a) one stream   in-process: {a['single_tokens_per_s']:7.2f} tok/s"
            f"  TTFT {a['single_ttft_ms']:7.1f} ms  ({a['single_tokens']} tokens)",
            f"    one stream   via stack:  {s['single_tokens_per_s']:7.2f} tok/s"
            f"  TTFT {s['single_ttft_ms']:7.1f} ms"
            f" -> {result['single_ratio']:.3f} x, TTFT {result['ttft_added_ms']:+.1f} ms"
            "  [goal >= 0.95 x, <= +15 ms]",
            f"(b) 8 prompts    in-process generate_batch: {a['batch8_tokens_per_s']:7.2f} tok/s",
            f"    8 streams    via stack:                 {s['streams8_tokens_per_s']:7.2f} tok/s"
            f" -> {result['eight_ratio']:.3f} x  [goal >= 0.85 x]",
            f"(c) {BATCH_PROMPTS} prompts   in-process generate_batch: "
            f"{a['batch_file_tokens_per_s']:7.2f} tok/s",
            f"    batch file   via stack:                 {s['batch_file_tokens_per_s']:7.2f} tok/s"
            f" -> {result['batch_file_ratio']:.3f} x; one stream's TTFT during it "
            f"{s['ttft_during_batch_ms'] or float('nan'):.1f} ms"
            f" (idle {s['single_ttft_ms']:.1f} ms,"
            f" {s['streams_during_batch']} streams)",
        ]
    )


def results_path() -> Path:
    return ROOT / "bench" / "results" / "chat.json"
