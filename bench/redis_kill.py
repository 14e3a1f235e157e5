"""Jobs lost when the dev stack's embedded Redis is SIGKILLed under load (``make run``).

``scripts/run_dev.py`` runs with its own Redis (a free port, an append-only file fsynced every
second, in a temporary directory); a client submits embeddings jobs (``POST /v1/jobs``) without
pause; Redis is SIGKILLed ``REDIS_KILL_ROUNDS`` times (default 3), run_dev restarts it, and
every job that was answered 202 is then awaited. Reported: jobs accepted, jobs lost (202 but
never finished: at most the last second of writes before a kill, by ``appendfsync everysec``),
and the outage (kill to the first 202 after it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

from bench.stack import RESULTS
from inferq.devstack import ROOT, redis_answers, wait_workers

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run() -> dict:
    rounds = int(os.environ.get("REDIS_KILL_ROUNDS", "3"))
    port, redis_port = _free_port(), _free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    base = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="inferq-redis-kill-")
    env = {**os.environ, "PORT": str(port), "REDIS_URL": url, "REDIS_DATA_DIR": data}
    env.update(MODELS=MODEL, LOG_LEVEL="WARNING", HF_HUB_OFFLINE="1")
    dev = subprocess.Popen([sys.executable, "scripts/run_dev.py"], cwd=ROOT, env=env)
    accepted: list[tuple[float, str]] = []
    refused = 0
    stopping = threading.Event()

    def submit() -> None:
        nonlocal refused
        with httpx.Client(base_url=base, timeout=10) as client:
            i = 0
            while not stopping.is_set():
                body = {"model": MODEL, "input": [f"bench text {i}"]}
                try:
                    r = client.post("/v1/jobs", json={"endpoint": "/v1/embeddings", "body": body})
                    if r.status_code == 202:
                        accepted.append((time.monotonic(), r.json()["id"]))
                    else:
                        refused += 1
                except httpx.HTTPError:
                    refused += 1
                i += 1
                time.sleep(0.02)

    outages = []
    try:
        wait_workers(f"{base}/ready", [MODEL], timeout=180, proc=dev)
        sender = threading.Thread(target=submit)
        sender.start()
        for _ in range(rounds):
            time.sleep(5)
            pid = redis.Redis.from_url(url).info("server")["process_id"]
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            while not any(t > killed for t, _ in accepted[-5:]):
                if time.monotonic() - killed > 120:
                    raise TimeoutError("no job accepted within 120 s of the kill")
                time.sleep(0.05)
            outages.append(next(t for t, _ in accepted if t > killed) - killed)
        time.sleep(3)
        stopping.set()
        sender.join(30)
        lost = []
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 300
            for at, job_id in accepted:
                while True:
                    r = client.get(f"/v1/jobs/{job_id}")
                    status = r.json()["status"] if r.status_code == 200 else "missing"
                    if status in ("succeeded", "failed", "cancelled", "missing"):
                        break
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                if status != "succeeded":
                    lost.append((at, job_id, status))
    finally:
        stopping.set()
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            dev.kill()
    assert not redis_answers(url)
    return {
        "rounds": rounds,
        "accepted": len(accepted),
        "refused_during_outages": refused,
        "lost": len(lost),
        "lost_statuses": sorted({s for _, _, s in lost}),
        "outage_sec": [round(o, 2) for o in outages],
        "command": "flock /tmp/inferq/bench.lock .venv/bin/python -m bench redis_kill",
    }


def report(result: dict) -> str:
    r = result
    return (
        f"{r['rounds']} Redis SIGKILLs under make run: {r['accepted']} jobs accepted, "
        f"{r['lost']} lost {r['lost_statuses'] or ''}, {r['refused_during_outages']} refused "
        f"(503) while Redis restarted; outage (kill to next 202): {r['outage_sec']} s"
    )


def results_path() -> Path:
    return RESULTS / "redis_kill.json"
