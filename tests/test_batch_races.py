"""Batch steps that race a cancel, run in process against the test Redis.

The steps (``plan``, ``finalize``) are the worker's own; the tasks they send go to queues
under a key prefix no worker reads, so the test decides when each step runs.
"""

from __future__ import annotations

import pytest
from celery import Celery

from inferq import batches as b
from inferq import protocol as p
from inferq.blobs import Blobs, blob_key
from inferq.catalog import load_catalog
from inferq.devstack import ROOT
from inferq.settings import Settings
from tests.batches_support import jsonl
from tests.conftest import MINILM

PREFIX = "inferq-tests-races:"  # the sent tasks' lists: nobody consumes them


@pytest.fixture
def runner(redis_url, redis_client):
    from workers.batch.runner import BatchRunner

    app = Celery("races", broker=redis_url)
    app.conf.broker_transport_options = {"global_keyprefix": PREFIX}
    catalog = load_catalog(ROOT / "models.yaml")
    yield BatchRunner(redis_client, Settings(redis_url=redis_url), app, lambda: catalog)
    stale = list(redis_client.scan_iter(f"{PREFIX}*"))
    if stale:
        redis_client.delete(*stale)


def _validating_batch(redis_client, batch_id: str, lines: list[dict]) -> None:
    """What ``POST /v1/batches`` leaves: the input file and a ``validating`` record."""
    writer = Blobs(redis_client).writer(f"file-{batch_id}", ttl=600)
    writer.write(jsonl(lines))
    writer.close()
    now = int(p.now())
    redis_client.hset(
        b.batch_key(batch_id),
        mapping={
            "id": batch_id,
            "endpoint": "/v1/embeddings",
            "input_file_id": f"file-{batch_id}",
            "completion_window": "24h",
            "status": b.BatchStatus.VALIDATING.value,
            "created_at": now,
            "expires_at": now + 86400,
            "metadata": "",
            "output_expires_after": "",
            "owner": "races",
            "total": 0,
            "completed": 0,
            "failed": 0,
        },
    )
    redis_client.expire(b.batch_key(batch_id), 600)


def test_a_cancel_while_the_plan_validates_leaves_counts_that_add_up(
    runner, redis_client, monkeypatch
):
    """The API's cancel of a ``validating`` batch finalizes it at once (no part queued yet),
    possibly while the plan is still reading a long file. The plan used to write its parts
    and ``total`` afterwards all the same: a ``cancelled`` batch counting N requests of
    which none completed or failed, and its parts and to-do list left behind."""
    import workers.batch.runner as module

    batch_id = "batch_races_cancel"
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MINILM, "input": "text"},
        }
        for i in range(3)
    ]
    _validating_batch(redis_client, batch_id, lines)
    make_plan = module.make_plan

    def plan_then_cancel(*args, **kwargs):
        plan = make_plan(*args, **kwargs)
        # what POST /v1/batches/{id}/cancel and the finalize it sends do meanwhile
        assert runner.store.transition(
            batch_id, [b.BatchStatus.VALIDATING], b.BatchStatus.CANCELLING, "cancelling_at"
        )
        runner.finalize(batch_id)
        return plan

    monkeypatch.setattr(module, "make_plan", plan_then_cancel)
    runner.plan(batch_id)
    runner.finalize(batch_id)  # the finalize the plan sends on finding the batch cancelled
    record = runner.store.record(batch_id)
    assert record["status"] == b.BatchStatus.CANCELLED
    counts = [int(record.get(name) or 0) for name in ("total", "completed", "failed")]
    assert counts[0] == counts[1] + counts[2], record
    assert not redis_client.exists(b.parts_key(batch_id), b.todo_key(batch_id, MINILM))
    redis_client.delete(b.batch_key(batch_id), blob_key(f"file-{batch_id}"))
