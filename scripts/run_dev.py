"""Run the whole service in the foreground: Redis (if none answers), one API, one worker.

``PORT`` (default 8000), ``HOST``, ``MODELS`` (default: the offline demo embedding model) and
``REDIS_URL`` are honoured. A worker that exits (e.g. after losing Redis) is restarted, and so
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

from inferq.devstack import ensure_redis, port_in_use, spawn, stop, wait_http_ready

DEFAULT_MODELS = "sentence-transformers/all-MiniLM-L6-v2"
RESTART_DELAY_SEC = 2.0


def main() -> int:
    env = {
        "MODELS": os.environ.get("MODELS") or DEFAULT_MODELS,
        "PORT": os.environ.get("PORT", "8000"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    }
    host = os.environ.get("HOST", "127.0.0.1")
    if not env["PORT"].isdigit():
        print(f"run_dev: PORT={env['PORT']!r} is not a port number", file=sys.stderr)
        return 2
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
    base = f"http://127.0.0.1:{env['PORT']}"
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


if __name__ == "__main__":
    sys.exit(main())
