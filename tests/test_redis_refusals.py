"""A Redis that refuses writes (``min-replicas-to-write`` without its replicas, as a master
cut off from them during a failover is) makes the API answer 503, never 500."""

from __future__ import annotations

import subprocess

import httpx
import redis

from inferq import protocol as p
from inferq.devstack import redis_server_binary, spawn, stop, wait_http_ready
from tests.conftest import free_port
from tests.sentinel_support import _pings, _wait

MODEL = "BAAI/bge-m3"  # in the shipped catalog; a fake heartbeat makes it "served"


def test_writes_refused_by_redis_are_503(tmp_path):
    redis_port, port = free_port(), free_port()
    server = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    api = None
    try:
        _wait(lambda: _pings(redis_port), 10, "redis")
        client = redis.Redis(port=redis_port)
        client.zadd(p.workers_key(MODEL), {"worker@nowhere:1": p.now() + 600})
        client.config_set("min-replicas-to-write", 1)  # no replica: every write is refused
        env = {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "PORT": str(port)}
        api = spawn("api", env, log_path=tmp_path / "api.log")
        base = f"http://127.0.0.1:{port}"
        wait_http_ready(f"{base}/health", timeout=60, proc=api)
        body = {"model": MODEL, "input": "x"}
        for response in (
            httpx.post(f"{base}/v1/embeddings", json=body, timeout=30),
            httpx.post(
                f"{base}/v1/jobs", json={"endpoint": "/v1/embeddings", "body": body}, timeout=30
            ),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "broker_unavailable"
            assert response.headers["retry-after"]
    finally:
        if api is not None:
            stop(api, timeout=10)
        stop(server, timeout=5)
