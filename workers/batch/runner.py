"""``BatchRunner``: the worker's side of the Batch API, one per worker (its part slots and
stop flag are process-wide)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery

from inferq import batches as b
from inferq import protocol as p
from inferq.catalog import Catalog
from inferq.settings import Settings
from workers.batch.finalizing import Finalizer
from workers.batch.planning import ModelNames, make_plan
from workers.batch.running import PartRunner
from workers.batch.store import BatchStore

log = logging.getLogger(__name__)


class BatchRunner:
    """Plans batches (``plan``), runs their parts (``run_runner``), finishes them (``sweep``,
    ``finalize``): the bodies of the batch tasks and of the heartbeat's sweep."""

    def __init__(
        self,
        redis_client,
        settings: Settings,
        celery: Celery,
        catalog_loader: Callable[[], Catalog],
    ):
        self.settings = settings
        self.store = BatchStore(redis_client, settings, celery)
        self.parts = PartRunner(self.store)
        self.finalizer = Finalizer(self.store)
        self._catalog_loader = catalog_loader
        self.stopping = self.parts.stopping  # the worker is shutting down
        self.run_runner = self.parts.run_runner
        self.run_part = self.parts.run_part
        self.sweep = self.finalizer.sweep
        self.finalize = self.finalizer.finalize

    def _announced_models(self) -> dict[str, dict]:
        raw = self.store.redis.hgetall(p.MODEL_INFO_KEY)
        return {k.decode(): p.loads(v) for k, v in raw.items()}

    def plan(self, batch_id: str) -> None:
        record = self.store.record(batch_id)
        if not record:
            return
        if record["status"] == b.BatchStatus.CANCELLING:
            self.store.send_finalize(batch_id)
            return
        if record["status"] == b.BatchStatus.IN_PROGRESS:  # a redelivery: runners sent?
            for model in p.loads(record.get("models") or "[]"):
                self.parts.add_runners(batch_id, model)
            return
        if record["status"] != b.BatchStatus.VALIDATING:
            return  # planned already (a redelivery)
        names = ModelNames(self._catalog_loader(), self._announced_models)
        plan = make_plan(self.store.blobs, record, names, self.settings)
        key = b.batch_key(batch_id)
        if plan.errors:
            self.store.redis.hset(
                key,
                mapping={"errors": p.dumps({"object": "list", "data": plan.errors}), "total": 0},
            )
            self.store.transition(
                batch_id, [b.BatchStatus.VALIDATING], b.BatchStatus.FAILED, "failed_at"
            )
            self.store.redis.zrem(b.open_batches_key(), batch_id)
            log.info("batch %s failed validation: %s", batch_id, plan.errors[0]["message"])
            return
        ttl = max(1, self.store.redis.ttl(key))
        models = sorted({part.model for part in plan.parts})
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hset(
            b.parts_key(batch_id),
            mapping={i: p.dumps(part.__dict__) for i, part in enumerate(plan.parts)},
        )
        pipe.expire(b.parts_key(batch_id), ttl)
        for model in models:
            todo = b.todo_key(batch_id, model)
            pipe.delete(todo)  # a redelivered plan starts the list afresh
            pipe.rpush(todo, *(i for i, part in enumerate(plan.parts) if part.model == model))
            pipe.expire(todo, ttl)
        pipe.hset(
            key,
            mapping={"parts": len(plan.parts), "total": plan.lines, "models": p.dumps(models)},
        )
        pipe.execute()
        if not self.store.transition(
            batch_id, [b.BatchStatus.VALIDATING], b.BatchStatus.IN_PROGRESS, "in_progress_at"
        ):
            self.store.send_finalize(batch_id)  # cancelled while validating
            return
        for model in models:
            self.parts.add_runners(batch_id, model)
        log.info("batch %s: %d lines in %d parts", batch_id, plan.lines, len(plan.parts))
