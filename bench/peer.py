"""The Infinity peer (michaelfeil/infinity) for the embeddings benchmark, where installed.

Never a project dependency: install it into a venv of its own and name its ``infinity_emb``
executable in ``BENCH_INFINITY`` (default ``/tmp/infinity-venv/bin/infinity_emb``), e.g.

    python3.11 -m venv /tmp/infinity-venv
    /tmp/infinity-venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/infinity-venv/bin/pip install "infinity-emb[torch,server]"

It serves the same weights (the MiniLM folder) with its torch engine at the same dtype, and
the benchmark drives it with the same clients (its OpenAI-style ``/embeddings`` route).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from inferq.devstack import stop
from workers.native_env import running_allocator

DEFAULT_BIN = "/tmp/infinity-venv/bin/infinity_emb"


def infinity_bin() -> str | None:
    path = os.environ.get("BENCH_INFINITY", DEFAULT_BIN)
    return path if path and Path(path).is_file() else None


@contextmanager
def infinity(
    weights: Path, *, dtype: str, port: int, log_path: Path, batch_size: int = 32
) -> Iterator[str]:
    """An Infinity server of ``weights`` at ``dtype`` (float32 / bfloat16); yields its base URL.
    It runs on the allocator this benchmark runs on (the worker's: bench/stack.py)."""
    binary = infinity_bin()
    _, allocator = running_allocator()
    assert binary is not None
    out = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [
            binary,
            "v2",
            "--model-id",
            str(weights),
            "--served-model-name",
            "minilm",
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--dtype",
            dtype,
            "--batch-size",
            str(batch_size),
            "--port",
            str(port),
            "--no-bettertransformer",
        ],
        env={
            **os.environ,
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "HF_HUB_OFFLINE": "1",
            **({"LD_PRELOAD": allocator} if allocator else {}),
        },
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"infinity exited with {proc.returncode} (see {log_path})")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"infinity did not start in 180 s (see {log_path})")
            time.sleep(0.5)
        yield base
    finally:
        stop(proc)
