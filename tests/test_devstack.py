"""`make run`'s pieces: an embedded Redis when none answers, and run_dev.py end to end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import redis

from inferq.devstack import ROOT, ensure_redis, port_in_use, redis_answers, stop, wait_workers
from tests.conftest import MINILM, free_port


def test_ensure_redis_starts_one_only_when_none_answers(redis_url, tmp_path):
    assert ensure_redis(redis_url) is None  # the session's server answers: nothing started
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert not redis_answers(url)
    proc = ensure_redis(url, data_dir=tmp_path)
    try:
        assert proc is not None
        assert redis.Redis.from_url(url).config_get("appendonly") == {"appendonly": "yes"}
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
        "REDIS_DATA_DIR": str(tmp_path / "redis"),
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


def _run_dev(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "scripts/run_dev.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_run_dev_restarts_a_killed_redis_with_its_data_and_dies_with_nothing_left(tmp_path):
    """SIGKILL the embedded Redis: run_dev starts it again by itself and the append-only file
    brings back the uploaded file, the finished job and the jobs accepted before the kill.
    Then SIGKILL run_dev itself: its children (API, worker, Redis) go with it."""
    port, redis_port = free_port(), free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    env = {
        "PATH": "/usr/bin:/bin",
        "PORT": str(port),
        "REDIS_URL": url,
        "REDIS_DATA_DIR": str(tmp_path / "redis"),
        "HF_HUB_OFFLINE": "1",
        "HOME": str(tmp_path),
    }
    proc = _run_dev(env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_workers(f"{base}/ready", [MINILM], timeout=120, proc=proc)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        line = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}\n'
        uploaded = client.files.create(file=("in.jsonl", line), purpose="batch")
        body = {"model": MINILM, "input": ["persisted"]}
        finished = httpx.post(f"{base}/v1/jobs", json={"endpoint": "/v1/embeddings", "body": body})
        finished_id = finished.json()["id"]
        done = _until(
            lambda: (
                (j := httpx.get(f"{base}/v1/jobs/{finished_id}").json())["status"] == "succeeded"
                and j
            ),
            60,
            "the first job",
        )
        accepted = [
            httpx.post(
                f"{base}/v1/jobs",
                json={"endpoint": "/v1/embeddings", "body": {"model": MINILM, "input": [f"t{i}"]}},
            ).json()["id"]
            for i in range(10)
        ]
        time.sleep(1.5)  # appendfsync everysec: what is older than a second is on disk
        pid = redis.Redis.from_url(url).info("server")["process_id"]
        os.kill(pid, signal.SIGKILL)
        _until(lambda: not redis_answers(url), 5, "Redis to go")
        _until(lambda: redis_answers(url), 30, "Redis to be restarted by run_dev")
        assert redis.Redis.from_url(url).info("server")["process_id"] != pid
        assert client.files.content(uploaded.id).read() == line
        again = httpx.get(f"{base}/v1/jobs/{finished_id}").json()
        assert again["status"] == "succeeded" and again["result"] == done["result"]
        for job_id in accepted:  # none lost, each run to its end
            _until(
                lambda job_id=job_id: (
                    httpx.get(f"{base}/v1/jobs/{job_id}").json()["status"] == "succeeded"
                ),
                120,
                f"job {job_id} after the restart",
            )
        proc.kill()  # no clean stop: the children must not outlive it
        proc.wait(10)
        _until(lambda: not _answers(f"{base}/health"), 30, "the API to die with run_dev")
        _until(lambda: not redis_answers(url), 30, "Redis to die with run_dev")
        _until(lambda: not port_in_use("127.0.0.1", port), 30, "the port to be free")
        output = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "redis exited" in output and "restarting it" in output


def test_run_dev_says_so_when_its_port_is_taken(tmp_path):
    redis_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "PATH": "/usr/bin:/bin",
            "PORT": str(port),
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "REDIS_DATA_DIR": str(tmp_path / "redis"),
            "HOME": str(tmp_path),
        }
        proc = _run_dev(env)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "already in use" in lines[0]
    assert not redis_answers(env["REDIS_URL"])  # nothing was started


def test_run_dev_reads_its_settings_from_dot_env_as_the_services_do(tmp_path):
    """README: settings come "from the environment or `.env`"; `make run` reads PORT there too
    (it used to take PORT only from the environment, and started the API on 8000)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / ".env").write_text(f"PORT={port}\nHOST=127.0.0.1\n")
        env = {
            "PATH": "/usr/bin:/bin",
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "REDIS_DATA_DIR": str(tmp_path / "redis"),
            "HOME": str(tmp_path),
        }
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "run_dev.py")],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    assert f"port {port} on 127.0.0.1 is already in use" in output
    assert not redis_answers(env["REDIS_URL"])  # nothing was started

    (tmp_path / ".env").write_text("PORT=eighty\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_dev.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "PORT" in done.stderr and "integer" in done.stderr, done
