"""The stack a benchmark runs against: Redis (started if none answers), one API, one worker."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from inferq.devstack import ROOT, ensure_redis, spawn, stop, wait_http_ready, wait_workers
from workers.native_env import prepare_process, running_allocator

RESULTS = ROOT / "bench" / "results"


def run_on_the_workers_allocator() -> None:
    """Run this benchmark process (its in-process references) on the allocator a worker picks
    (``WORKER_MALLOC``, default tcmalloc where installed: workers/native_env.py), executing
    itself again where needed, so that the model's figures of a run are measured on one
    allocator. The processes it starts choose their own as deployed (the API the system's, the
    worker by its ``WORKER_MALLOC``), except Infinity, which runs on this one (bench/peer.py).
    Call it first in a benchmark's ``main``."""
    prepare_process(os.environ.get("WORKER_MALLOC", "auto"))


@dataclass
class BenchStack:
    base: str  # the API's base URL
    api: subprocess.Popen
    worker: subprocess.Popen

    def worker_allocator(self) -> str:
        return running_allocator(self.worker.pid)[0]


def setup_line(in_process: dict, stack: dict, machine: dict) -> str:
    """A report's first line: the dtype and the allocator in process and in the worker."""
    return (
        f"dtype: in process {in_process['dtype']}, stack {stack['dtype']}; allocator"
        f" in process {machine.get('allocator', 'system')},"
        f" worker {stack.get('worker_allocator', 'system')}"
    )


@contextmanager
def one_worker_stack(
    name: str,
    model: str,
    *,
    port: int,
    redis_db: int,
    log_level: str = "WARNING",
    worker_env: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    ready_timeout: float = 120,
) -> Iterator[BenchStack]:
    """An API and a worker of ``model`` (logs in bench/results/``name``-*.log), stopped on exit.
    ``env`` goes to both processes, ``worker_env`` to the worker only.
    ``BENCH_PORT`` and ``BENCH_REDIS_URL`` override the port and the Redis database;
    ``BENCH_WORKER_ENV`` (``"NAME=value NAME=value"``) adds to the worker's environment."""
    port = int(os.environ.get("BENCH_PORT", str(port)))
    redis_url = os.environ.get("BENCH_REDIS_URL", f"redis://127.0.0.1:6379/{redis_db}")
    env = {
        "REDIS_URL": redis_url,
        "PORT": str(port),
        "MODELS": model,
        "LOG_LEVEL": log_level,
        **(env or {}),
    }
    redis_proc = ensure_redis(redis_url)
    RESULTS.mkdir(parents=True, exist_ok=True)
    api = spawn("api", env, log_path=RESULTS / f"{name}-api.log")
    extra = dict(
        item.split("=", 1) for item in os.environ.get("BENCH_WORKER_ENV", "").split() if item
    )
    worker = spawn(
        "workers",
        {**env, **(worker_env or {}), **extra},
        log_path=RESULTS / f"{name}-worker.log",
    )
    stack = BenchStack(base=f"http://127.0.0.1:{port}", api=api, worker=worker)
    try:
        wait_http_ready(f"{stack.base}/health", timeout=30, proc=api)
        wait_workers(f"{stack.base}/ready", [model], timeout=ready_timeout, proc=worker)
        yield stack
    finally:
        for proc in (worker, api):
            stop(proc)
        if redis_proc is not None:
            stop(redis_proc)
