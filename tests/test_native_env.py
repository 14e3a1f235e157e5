"""The worker's native start-up environment (workers/native_env.py): the allocator it runs on
and the size of oneDNN's kernel cache, checked on real worker processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from inferq.devstack import ROOT, spawn, stop
from tests.conftest import free_port
from workers.native_env import (
    ONEDNN_CACHE_CAPACITY,
    AllocatorNotFound,
    allocator_library,
)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_workers_run_on_tcmalloc_with_a_large_onednn_cache_by_default(stack):
    """`make test` installs tcmalloc (scripts/install_system_packages.sh): every worker of the
    session's stack, started with the default WORKER_MALLOC=auto, executed itself again with it
    preloaded, the same pid, and serves (the other tests' answers come from these workers)."""
    workers = [p for p in stack.procs if p.args[-1] == "workers" and p.poll() is None]
    assert workers
    for proc in workers:
        assert "libtcmalloc" in _maps(proc.pid)
        # the environment it was executed again with
        environ = _environ(proc.pid)
        assert environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_CACHE_CAPACITY)
        assert "tcmalloc" in environ["LD_PRELOAD"]


def test_a_worker_on_the_system_allocator_says_so(stack):
    port = free_port()
    proc = stack.start_worker(
        ["tiny-bert-cls"], WORKER_MALLOC="system", WORKER_METRICS_PORT=str(port)
    )
    try:
        assert "libtcmalloc" not in _maps(proc.pid)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        assert re.search(r'^inferq_worker_allocator_info\{allocator="system"\} 1\.0$', text, re.M)
        assert "tcmalloc" not in text
    finally:
        stop(proc)


def test_a_missing_allocator_stops_the_worker_with_its_name(stack, tmp_path):
    log = tmp_path / "worker.log"
    env = {**stack.env, "MODELS": "tiny-bert-cls", "WORKER_MALLOC": "/nowhere/libnothing.so"}
    proc = spawn("workers", env, log_path=log)
    try:
        assert proc.wait(60) != 0
    finally:
        stop(proc)
    assert "WORKER_MALLOC=/nowhere/libnothing.so: no such file" in log.read_text()


def test_allocator_choices():
    assert allocator_library("system") is None
    # auto leaves a preload the operator set alone
    assert allocator_library("auto", {"LD_PRELOAD": "/opt/libmine.so"}) is None
    assert "tcmalloc" in allocator_library("auto", {})
    assert "tcmalloc" in allocator_library("tcmalloc", {})
    with pytest.raises(AllocatorNotFound, match="not auto, system"):
        allocator_library("mimalloc", {})


def test_after_its_execution_again_a_process_hands_its_children_the_environment_it_had():
    """The worker (or a benchmark) runs on the preloaded allocator; what it starts chooses its
    own (the benchmarks' API, a worker told WORKER_MALLOC=system)."""
    code = (
        "import os; from workers.native_env import prepare_process, running_allocator; "
        "prepare_process('tcmalloc'); "
        "print(running_allocator()[0], os.environ.get('LD_PRELOAD', '-'), "
        "os.environ.get('INFERQ_MALLOC_APPLIED', '-'))"
    )
    for preload, left in (({}, "-"), ({"LD_PRELOAD": "libm.so.6"}, "libm.so.6")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **preload},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        assert out == ["tcmalloc", left, "-"]


ONEDNN_PROBE = """
import sys
import torch
from workers.native_env import configure_onednn

configure_onednn()  # after torch's import, before the first kernel: what the worker does
linear = torch.nn.Linear(64, 64).to(torch.bfloat16)
with torch.inference_mode():
    for round in range(2):
        for rows in range(1, 1300):  # 1299 shapes: more than oneDNN's default 1024
            linear(torch.randn(rows, 64, dtype=torch.bfloat16))
        print("ROUND", round, flush=True)
"""


def test_onednn_keeps_every_kernel_of_a_varied_load_when_configured_before_the_first_pass():
    """oneDNN reads its cache size when it makes its first kernel. Set the way the worker sets
    it, a second round over 1299 shapes compiles nothing; at oneDNN's default of 1024 every
    kernel of the second round is compiled again (the cache evicts in first-used order)."""

    def second_round_misses(env: dict[str, str]) -> tuple[int, int]:
        out = subprocess.run(
            [sys.executable, "-c", ONEDNN_PROBE],
            cwd=ROOT,
            env={**env, "ONEDNN_VERBOSE": "profile_create", "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
        first, _, second = out.partition("ROUND 0")
        return first.count("cache_miss"), second.count("cache_miss")

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    first, second = second_round_misses(env)
    # torch makes a bf16 matmul a oneDNN kernel per shape on CPUs with AVX512 (the CI's has
    # AVX512-BF16 and AMX); elsewhere there is nothing to count
    assert first > 1024, "no oneDNN kernel per shape: a CPU without AVX512?"
    assert second == 0
    _, second_at_default = second_round_misses({**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"})
    assert second_at_default > 200
