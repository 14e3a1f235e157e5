"""Workers: models loaded once, presence announced and withdrawn, the API stays light."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from inferq import protocol as p
from inferq.devstack import ROOT, stop
from tests.conftest import MINILM


def test_api_process_never_imports_model_code():
    code = (
        "import sys, time; t = time.perf_counter(); from api.app import create_app; create_app();"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().endswith("[]")


def test_each_model_is_loaded_once_per_worker(stack):
    session_worker = sorted(stack.log_dir.glob("worker-all-MiniLM-L6-v2-*.log"))[0]
    logs = session_worker.read_text()
    assert logs.count(f"loaded {MINILM} on") == 1
    assert logs.count("loaded tiny-qwen-last on") == 1


def test_stopped_worker_leaves_and_its_model_gets_503(stack, redis_client):
    model = "tiny-bert-cls"
    before = redis_client.zcard(p.workers_key(model))  # the session worker (and maybe others)
    worker = stack.start_worker([model], WORKER_CONCURRENCY="2")
    assert redis_client.zcard(p.workers_key(model)) == before + 1
    stop(worker)  # SIGTERM: warm shutdown, deregistered at once
    assert redis_client.zcard(p.workers_key(model)) == before
    body = {"model": model, "input": "still served by the session worker"}
    assert httpx.post(f"{stack.v1}/embeddings", json=body).status_code == 200


def test_a_worker_with_an_unknown_model_fails_with_a_hint(stack):
    from inferq.devstack import spawn

    proc = spawn(
        "workers", {**stack.env, "MODELS": "BAAI/bge-m4"}, log_path=stack.log_dir / "bad.log"
    )
    assert proc.wait(60) != 0
    assert "did you mean" in (stack.log_dir / "bad.log").read_text()


def test_heartbeat_expiry_means_no_live_worker(stack, redis_client):
    model = "google/embeddinggemma-300m"  # in the catalog, never served in the tests
    redis_client.zadd(p.workers_key(model), {"ghost": p.now() + 3.0})
    assert httpx.get(f"{stack.base_url}/ready").json()["models"].get(model) == 1
    time.sleep(4.2)  # past the ghost's expiry and the API's 1 s presence cache
    assert model not in httpx.get(f"{stack.base_url}/ready").json()["models"]
    response = httpx.post(f"{stack.v1}/embeddings", json={"model": model, "input": "x"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_not_loaded"


def test_a_beat_after_stop_does_not_put_the_worker_back(redis_client, redis_url):
    """A heartbeat in flight when the worker stops must not re-register it."""
    from inferq.settings import Settings
    from workers.presence import Heartbeat

    model = "lifecycle-test-model"
    heartbeat = Heartbeat(redis_client, Settings(redis_url=redis_url), "w-late", {model: {}})
    heartbeat.beat()
    assert redis_client.zscore(p.workers_key(model), "w-late") is not None
    heartbeat.stop()
    heartbeat.beat()  # what the heartbeat thread does if it was already past its wait
    assert redis_client.zscore(p.workers_key(model), "w-late") is None
