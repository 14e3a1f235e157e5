"""Where a sync embeddings request's time goes in the stack: py-spy on the API and the worker under
the benchmark's 32 x 8 load (issue 14).

``python -m bench.profile_stack`` starts the same one-worker stack as ``bench embeddings``
(``BENCH_DTYPE``, default ``auto``), drives it for ``BENCH_PROFILE_SEC`` (default 30) seconds
while ``py-spy record --gil --nonblocking`` samples the thread holding each process's GIL (so
its samples are the process's Python time; torch's kernels and the tokenizer run without it),
and prints per process: CPU milliseconds per request (from /proc, user + system), GIL-held
milliseconds per request, and those by the library their innermost Python frame belongs to. Raw
stacks are kept in ``bench/results/profile-{api,worker}.txt`` (py-spy's collapsed format) for
flame graphs. Needs ``py-spy`` (in the ``dev`` extra) and the right to ptrace the children (root
or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.embeddings import MODEL, bench_dtype, corpus
from bench.stack import RESULTS, one_worker_stack, run_on_the_workers_allocator

CLIENTS, PER_REQUEST = 32, 8
RATE = 200  # samples per second; each sample of the GIL holder stands for 1/RATE s of it

LIBRARIES = [  # (label, how its frames' files begin: py-spy prints paths from sys.path)
    ("torch forward", ("torch/",)),
    ("transformers", ("transformers/",)),
    ("tokenizers", ("tokenizers/",)),
    ("numpy", ("numpy/",)),
    ("kombu", ("kombu/",)),
    ("celery", ("celery/", "billiard/", "vine/")),
    ("redis client", ("redis/",)),
    ("uvicorn/h11", ("uvicorn/", "h11/", "httptools/")),
    ("starlette/fastapi", ("starlette/", "fastapi/", "sse_starlette/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("anyio", ("anyio/",)),
    ("asyncio", ("asyncio/",)),
    ("json", ("json/",)),
    ("logging", ("logging/",)),
    ("threading/queue", ("threading.py", "queue.py", "concurrent/")),
    ("socket/selectors", ("selectors.py", "socket.py", "ssl.py")),
    ("inferq api", ("api/",)),
    ("inferq workers", ("workers/",)),
    ("inferq handlers", ("handlers/",)),
    ("inferq shared", ("inferq/",)),
]


def _library(frame: str) -> str | None:
    """The library of a py-spy frame ``function (path:line)``."""
    path = frame.rpartition(" (")[2]
    for label, prefixes in LIBRARIES:
        if path.startswith(prefixes):
            return label
    return None


def summarise(collapsed: Path) -> Counter:
    """Samples by the library of the innermost frame that belongs to a known one."""
    counts: Counter = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue  # a sample py-spy could not finish reading
        frames = stack.split(";")[1:]  # the first is the thread
        label = next((lib for f in reversed(frames) if (lib := _library(f))), "other")
        counts[label] += int(n)
    return counts


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(base: str, texts: list[str], seconds: float) -> int:
    done = 0
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:

        async def worker(k: int) -> None:
            nonlocal done
            i = k * PER_REQUEST
            while time.monotonic() < stop_at:
                chunk = texts[i % len(texts) : i % len(texts) + PER_REQUEST]
                body = {"model": MODEL, "input": chunk, "encoding_format": "base64"}
                (await client.post("/v1/embeddings", json=body)).raise_for_status()
                done += 1
                i += CLIENTS * PER_REQUEST

        await asyncio.gather(*(worker(k) for k in range(CLIENTS)))
    return done


def main() -> int:
    run_on_the_workers_allocator()
    seconds = float(os.environ.get("BENCH_PROFILE_SEC", "30"))
    texts = corpus()
    venv_spy = Path(sys.executable).with_name("py-spy")
    spy = str(venv_spy) if venv_spy.exists() else "py-spy"
    with one_worker_stack(
        "profile", MODEL, port=8768, redis_db=9, worker_env={"MODEL_DTYPE": bench_dtype()}
    ) as stack:
        asyncio.run(_load(stack.base, texts, 5))  # warm-up
        procs = {"api": stack.api.pid, "worker": stack.worker.pid}
        outs = {name: RESULTS / f"profile-{name}.txt" for name in procs}
        spies = [
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(RATE),
                    "--gil",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--duration",
                    str(int(seconds)),
                    "--output",
                    str(outs[name]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in procs.items()
        ]
        cpu0 = {name: _cpu_seconds(pid) for name, pid in procs.items()}
        started = time.monotonic()
        requests = asyncio.run(_load(stack.base, texts, seconds))
        wall = time.monotonic() - started
        cpu = {name: _cpu_seconds(pid) - cpu0[name] for name, pid in procs.items()}
        for s in spies:
            s.wait(timeout=seconds + 60)
    print(f"dtype {bench_dtype()}, {CLIENTS} clients x {PER_REQUEST} texts, {wall:.1f} s")
    print(
        f"{requests} requests, {requests / wall:.1f} req/s,"
        f" {requests * PER_REQUEST / wall:.1f} texts/s"
    )
    for name in procs:
        counts = summarise(outs[name])
        total = sum(counts.values()) or 1
        print(
            f"\n{name}: {cpu[name]:.1f} CPU s ="
            f" {1000 * cpu[name] / requests:.2f} CPU ms per request"
            f" ({100 * cpu[name] / wall:.0f} % of one core); samples {total}"
        )
        held = total / RATE
        print(
            f"  GIL held {held:.1f} s = {1000 * held / requests:.2f} ms per request"
            f" ({100 * held / wall:.0f} % of the wall time); by library:"
        )
        for label, n in counts.most_common(14):
            ms = 1000 * n / RATE / requests
            print(f"  {label:24s} {100 * n / total:5.1f} %  {ms:6.2f} ms/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
