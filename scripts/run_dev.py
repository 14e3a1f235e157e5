"""Run the whole service in the foreground: Redis (if none answers), one API, one worker.

``PORT`` (default 8000), ``HOST``, ``MODELS`` (default: the offline demo embedding model) and
``REDIS_URL`` are honoured, from the environment or a ``.env`` file, as every process reads them
(``inferq/settings.py``). A worker that exits (e.g. after losing Redis) is restarted, and so
is the embedded Redis this script started (it keeps its data in an append-only file under
``.cache/redis/<port>``, or ``REDIS_DATA_DIR``, so jobs, files and batches survive). Ctrl-C
stops everything: the worker finishes its running jobs. Should this script be killed, its
children die with it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import ValidationError

from inferq.devstack import ensure_redis, port_in_use, spawn, stop, wait_http_ready
from inferq.settings import Settings

DEFAULT_MODELS = "sentence-transformers/all-MiniLM-L6-v2"
RESTART_DELAY_SEC = 2.0


def main() -> int:
    try:
        settings = Settings()  # the environment over .env, as the API and the worker read them
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"run_dev: bad setting: {problems}", file=sys.stderr)
        return 2
    env = {
        "MODELS": ",".join(settings.models) or DEFAULT_MODELS,
        "PORT": str(settings.port),
        "REDIS_URL": settings.redis_url,
        "HOST": settings.host,
    }
    host = settings.host
    if port_in_use(host, int(env["PORT"])):
        print(
            f"run_dev: port {env['PORT']} on {host} is already in use (another inferq API?); "
            "stop that process or choose another port: PORT=8001 make run",
            file=sys.stderr,
        )
        return 1
    data_dir = Path(os.environ["REDIS_DATA_DIR"]) if os.environ.get("REDIS_DATA_DIR") else None
    redis_proc = ensure_redis(env["REDIS_URL"], data_dir=data_dir)
    api = spawn("api", env)
    worker = spawn("workers", env)
    base = f"http://{_connect_host(host)}:{env['PORT']}"
    stopping = False

    def request_stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGHUP, request_stop)  # the terminal went away: stop, cleanly
    try:
        wait_http_ready(f"{base}/health", timeout=30, proc=api)
        print(
            f"inferq API on {base}/v1 (docs: {base}/docs); worker loading {env['MODELS']}",
            flush=True,
        )
        while not stopping and api.poll() is None:
            if redis_proc is not None and redis_proc.poll() is not None:  # supervise Redis too
                print(f"redis exited ({redis_proc.returncode}); restarting it", flush=True)
                redis_proc = ensure_redis(env["REDIS_URL"], data_dir=data_dir)
            if worker.poll() is not None:  # supervise: a worker that lost its broker may exit
                print(f"worker exited ({worker.returncode}); restarting it", flush=True)
                time.sleep(RESTART_DELAY_SEC)
                worker = spawn("workers", env)
            time.sleep(0.2)
    finally:
        print("stopping ...", flush=True)
        for proc in (worker, api):
            stop(proc)
        if redis_proc is not None:
            stop(redis_proc)
    return 0 if stopping else 1


def _connect_host(host: str) -> str:
    """Where to reach an API bound to ``host``: loopback for a wildcard address."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if ":" in host:
        return "[::1]" if host == "::" else f"[{host}]"
    return host


if __name__ == "__main__":
    sys.exit(main())
