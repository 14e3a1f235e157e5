"""``BatchRunner``: the worker's side of the Batch API, one per worker (its part slots and
stop flag are process-wide)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
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
        now = int(p.now())
        if plan.errors:

            def fail(pipe) -> None:
                errors = p.dumps({"object": "list", "data": plan.errors})
                failed = {"status": b.BatchStatus.FAILED.value, "failed_at": now}
                pipe.hset(key, mapping={"errors": errors, "total": 0, **failed})
                pipe.zrem(b.open_batches_key(), batch_id)

            if self._write_while_validating(batch_id, fail):
                self.store.release_input(batch_id, record["input_file_id"])
                log.info("batch %s failed validation: %s", batch_id, plan.errors[0]["message"])
            return
        ttl = max(1, self.store.redis.ttl(key))
        models = sorted({part.model for part in plan.parts})

        def start(pipe) -> None:
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
            started = {"status": b.BatchStatus.IN_PROGRESS.value, "in_progress_at": now}
            counts = {"parts": len(plan.parts), "total": plan.lines, "models": p.dumps(models)}
            pipe.hset(key, mapping={**counts, **started})

        if not self._write_while_validating(batch_id, start):
            return
        for model in models:
            self.parts.add_runners(batch_id, model)
        log.info("batch %s: %d lines in %d parts", batch_id, plan.lines, len(plan.parts))

    def _write_while_validating(self, batch_id: str, writes: Callable[[Any], None]) -> bool:
        """Run ``writes`` (a pipeline's commands) in one transaction, only while the batch is
        still ``validating``. A cancel meanwhile (the plan reads the whole file first) has
        sent its finalize, which may have run already: the plan then writes nothing, so
        the cancelled batch counts no request that no part will ever settle. False then, and
        a finalize is sent to finish the cancel (as the cancel's own may not have run yet)."""
        key = b.batch_key(batch_id)
        with self.store.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "status") != b.BatchStatus.VALIDATING.value.encode():
                        pipe.unwatch()
                        break
                    pipe.multi()
                    writes(pipe)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # the record changed meanwhile: look at its status again
        log.info("batch %s was cancelled while it was validated", batch_id)
        self.store.send_finalize(batch_id)
        return False
