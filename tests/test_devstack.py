"""`make run`'s pieces: an embedded Redis when none answers, and run_dev.py end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import openai
import redis

from inferq.devstack import ROOT, ensure_redis, redis_answers, stop, wait_workers
from tests.conftest import MINILM, free_port


def test_ensure_redis_starts_one_only_when_none_answers(redis_url):
    assert ensure_redis(redis_url) is None  # the session's server answers: nothing started
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert not redis_answers(url)
    proc = ensure_redis(url)
    try:
        assert proc is not None
        assert redis.Redis.from_url(url).ping()
    finally:
        stop(proc)
    assert not redis_answers(url)


def test_run_dev_serves_the_demo_model_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    redis_port = free_port()  # nothing answers there: run_dev must start its own Redis
    env = {
        "PATH": "/usr/bin:/bin",
        "PORT": str(port),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "HF_HUB_OFFLINE": "1",
        "HOME": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, "scripts/run_dev.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_workers(f"http://127.0.0.1:{port}/ready", [MINILM], timeout=120, proc=proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        assert len(client.embeddings.create(model=MINILM, input="hi").data[0].embedding) == 384
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "stopping" in output
    time.sleep(0.5)
    assert not redis_answers(env["REDIS_URL"])  # its embedded Redis went with it
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        raise AssertionError("the API is still answering")
    except httpx.ConnectError:
        pass
