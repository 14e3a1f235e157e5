"""What the request benchmarks share: timing a call, and driving a route with concurrent
clients (``embeddings``, ``rerank``)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import httpx


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


async def drive(base: str, path: str, bodies: list[dict], clients: int) -> float:
    """Wall seconds for ``clients`` concurrent connections to POST every body to ``path``."""
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                (await client.post(path, json=queue.get_nowait())).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started


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
