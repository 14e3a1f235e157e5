"""Celery's own CLI, as the README documents it: `celery -A workers.celery_app inspect ...` from
the API image (no torch), and a worker started as `celery -A workers.celery_app worker`."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

from packaging.utils import canonicalize_name

from inferq.batches import CONTROL_QUEUE
from inferq.devstack import ROOT, stop
from inferq.protocol import queue_name, workers_key
from tests.deploy_support import PYPROJECT
from tests.test_dockerfile import requirement_closure

PROJECT_PACKAGES = {"api", "workers", "handlers", "inferq"}
# A wrapper that runs Celery's CLI with the named top-level modules unimportable.
BLOCKED_CELERY = textwrap.dedent(
    """
    import json, sys
    blocked = set(json.loads(sys.argv.pop(1)))
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (not in the API image)")
            return None
    sys.meta_path.insert(0, Blocker())
    from celery.__main__ import main
    sys.argv[0] = "celery"
    main()
    """
)


def _outside_the_api_image() -> list[str]:
    """Top-level modules installed here that the API image (base dependencies) lacks."""
    installed = requirement_closure(PYPROJECT["project"]["dependencies"])
    return sorted(
        top
        for top, dists in importlib.metadata.packages_distributions().items()
        if not {canonicalize_name(d) for d in dists} & installed
        and top not in sys.stdlib_module_names
        and top not in PROJECT_PACKAGES | {"pip", "setuptools", "_distutils_hack"}
    )


def _celery(env: dict[str, str], *args: str, blocked: list[str] | None = None):
    argv = [sys.executable, "-c", BLOCKED_CELERY, json.dumps(blocked or []), *args]
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _inspect(env: dict[str, str], what: str, node: str) -> dict:
    done = _celery(env, "-A", "workers.celery_app", "inspect", what, "-d", node, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])[node]


def test_celery_inspect_runs_with_the_api_images_dependencies_only(stack):
    """README: `docker compose exec api celery -A workers.celery_app inspect active`; the API
    image has no torch, numpy or transformers."""
    blocked = _outside_the_api_image()
    assert {"torch", "numpy", "transformers"} <= set(blocked)
    worker = next(p for p in stack.procs if p.args[-1] == "workers")
    node = f"worker@{socket.gethostname()}:{worker.pid}"
    env = {**os.environ, **stack.env}
    done = _celery(
        env, "-A", "workers.celery_app", "inspect", "active_queues", "-d", node, blocked=blocked
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{node}: OK" in done.stdout, done.stdout
    assert queue_name("tiny-bert-cls") in done.stdout and CONTROL_QUEUE in done.stdout


def test_a_worker_started_with_celerys_cli_consumes_the_control_queue(stack, redis_client):
    """README: `MODELS=... celery -A workers.celery_app worker -P threads -Q
    inferq.model.<name>`: such a worker also serves batches (the control queue) and holds
    WORKER_CONCURRENCY jobs in the threads pool, as `python -m workers` does (`-P threads` left
    out here: it is the app's default)."""
    node = f"cli@{socket.gethostname()}"
    env = {**os.environ, **stack.env, "MODELS": "tiny-bert-cls", "WORKER_CONCURRENCY": "5"}
    argv = ["-A", "workers.celery_app", "worker", "-Q", queue_name("tiny-bert-cls")]
    argv += ["-n", node, "--without-gossip"]
    log = open(stack.log_dir / "celery-cli-worker.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_CELERY, "[]", *argv],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        deadline = time.monotonic() + 300
        while not redis_client.zscore(workers_key("tiny-bert-cls"), node):
            assert proc.poll() is None, stack.logs()
            assert time.monotonic() < deadline, "the CLI worker never announced its model"
            time.sleep(0.2)
        queues = {q["name"]: q["exchange"]["name"] for q in _inspect(env, "active_queues", node)}
        assert queues == {q: q for q in (CONTROL_QUEUE, queue_name("tiny-bert-cls"))}
        pool = _inspect(env, "stats", node)["pool"]
        assert pool["max-concurrency"] == 5, pool
        assert pool["implementation"] == "celery.concurrency.thread:TaskPool", pool
    finally:
        stop(proc, timeout=30)


def test_every_worker_binds_the_control_queue_to_the_exchange_it_is_sent_to(stack):
    """The API and workers send batch plan/finalize tasks to exchange inferq.control (Celery's
    queue for the name); a worker declares its queues, and so their bindings, each time it
    connects. Adding the control queue by name (select_add) bound it to the default exchange
    'celery' instead, in `python -m workers` as well, so a worker no longer declared the binding
    the senders route by (after a Redis that lost its keys: 'Cannot route message')."""
    worker = next(p for p in stack.procs if p.args[-1] == "workers")
    node = f"worker@{socket.gethostname()}:{worker.pid}"
    env = {**os.environ, **stack.env}
    queues = {q["name"]: q for q in _inspect(env, "active_queues", node)}
    control = queues[CONTROL_QUEUE]
    assert (control["exchange"]["name"], control["routing_key"]) == (CONTROL_QUEUE, CONTROL_QUEUE)
    model = queues[queue_name("tiny-bert-cls")]
    assert model["exchange"]["name"] == queue_name("tiny-bert-cls")
