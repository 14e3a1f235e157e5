"""What the request benchmarks share: timing a call, and driving a route with concurrent
clients (``embeddings``, ``rerank``)."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(call: Callable[[int], object], runs: int) -> list[float]:
    """Seconds each of ``call(0) .. call(runs - 1)`` took, one after another."""
    seconds = []
    for i in range(runs):
        started = time.perf_counter()
        call(i)
        seconds.append(time.perf_counter() - started)
    return seconds


def warm_timed(call: Callable[[int], object], runs: int) -> list[float]:
    """:func:`timed`, after one untimed round of the same calls: an in-process reference at
    its best, each input's shape met before (a worker runs a lone input of every length up to
    ``EMBED_WARM_UP_TOKENS`` at load)."""
    timed(call, runs)
    return timed(call, runs)


def sequential(base: str, call: Callable[[httpx.Client, int], object], runs: int) -> list[float]:
    """Seconds each of ``call(client, 0) .. call(client, runs - 1)`` took, one after another,
    on one keep-alive connection to ``base``."""
    with httpx.Client(base_url=base, timeout=60) as client:
        return timed(lambda i: call(client, i), runs)


def load_client() -> str:
    """The load generator's HTTP client: ``BENCH_CLIENT`` = ``aiohttp`` (default) or ``httpx``.

    On two cores the load generator shares the CPU with what it measures: httpx's async client
    took 5-6 % of a core under the 32 x 8 load, aiohttp 1 % (``client_cpu_share`` in each
    figure), CPU taken from the worker and the peer alike.
    """
    client = os.environ.get("BENCH_CLIENT", "aiohttp")
    if client not in ("aiohttp", "httpx"):
        raise SystemExit(f"BENCH_CLIENT must be aiohttp or httpx, not {client!r}")
    return client


async def drive(base: str, path: str, bodies: list[dict], clients: int) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) for ``clients`` concurrent connections to POST
    every body to ``path`` with :func:`load_client`; the bodies are encoded before the clock
    starts."""
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(orjson.dumps(body))
    headers = {"content-type": "application/json"}
    if load_client() == "aiohttp":
        import aiohttp  # the dev extra's; BENCH_CLIENT=httpx runs without it

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=clients),
            timeout=aiohttp.ClientTimeout(total=300),
            headers=headers,
        )

        async def post(payload: bytes) -> None:
            async with session.post(base + path, data=payload) as response:
                response.raise_for_status()
                await response.read()

    else:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        session = httpx.AsyncClient(base_url=base, timeout=300, limits=limits, headers=headers)

        async def post(payload: bytes) -> None:
            (await session.post(path, content=payload)).raise_for_status()

    async with session:

        async def worker() -> None:
            while not queue.empty():
                await post(queue.get_nowait())

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started, time.process_time() - cpu


def queue_messages(base: str, model: str) -> tuple[int, int] | None:
    """(Celery messages, jobs they carried) the API at ``base`` sent to ``model``'s queue, from
    its ``/metrics`` (None where the server has no such metric: a peer, an older inferq)."""
    try:
        text = httpx.get(f"{base}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    counts = []
    for what in ("messages", "jobs"):
        pattern = rf'inferq_queue_messages_sent{{model="{re.escape(model)}",what="{what}"}} (\S+)'
        match = re.search(pattern, text)
        if match is None:
            return None
        counts.append(int(float(match.group(1))))
    return counts[0], counts[1]


def jobs_per_message(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Jobs per Celery message between two :func:`queue_messages` readings."""
    if before is None or after is None or after[0] == before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])


@dataclass
class LoadRun:
    """What :func:`load_and_lone` measured against one server."""

    wall_s: float  # median wall seconds of the load's repeats
    client_cpu_share: float  # the load generator's CPU over the wall time (of one core)
    jobs_per_message: float | None
    lone: list[float]  # seconds of each lone request before the load (after the warm-up)
    lone_after: list[float]  # the same requests right after the load


def load_and_lone(
    base: str,
    path: str,
    model: str,
    bodies: list[dict],
    warm_up: list[dict],
    *,
    clients: int,
    repeats: int,
    lone: Callable[[httpx.Client, int], object],
    lone_runs: int,
) -> LoadRun:
    """``warm_up`` then ``lone_runs`` calls of ``lone`` one after another, ``repeats`` times
    ``bodies`` from ``clients`` connections, then the lone calls again."""
    asyncio.run(drive(base, path, warm_up, clients))
    before = sequential(base, lone, lone_runs)
    sent_before = queue_messages(base, model)
    measured = [asyncio.run(drive(base, path, bodies, clients)) for _ in range(repeats)]
    per_message = jobs_per_message(sent_before, queue_messages(base, model))
    walls = [wall for wall, _ in measured]
    return LoadRun(
        wall_s=statistics.median(walls),
        client_cpu_share=sum(cpu for _, cpu in measured) / sum(walls),
        jobs_per_message=per_message,
        lone=before,
        lone_after=sequential(base, lone, lone_runs),
    )
