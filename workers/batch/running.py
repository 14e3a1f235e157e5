"""Running a batch's parts: runners claim parts of one model; a part's lines run together
(:mod:`workers.batch.lines`) and are settled once."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from inferq import batches as b
from inferq import protocol as p
from inferq.errors import ServiceError
from workers.batch.lines import lines_for
from workers.batch.store import BatchStore, output_line, stopped, stopped_line
from workers.jobs import as_service_error

if TYPE_CHECKING:  # the registry imports the serving modules
    from workers.loaded import LoadedModel

log = logging.getLogger(__name__)

STOP_POLL_SEC = 1.0  # a running part re-reads its batch's status this often
HAND_BACK_AFTER_SEC = 1.0  # a runner waits this long for a free part slot, then goes back


class PartRunner:
    """Runs parts on this worker, at most ``BATCH_ACTIVE_PARTS`` at once; ``stopping`` is set
    when the worker shuts down (runners hand their batches back after the current part)."""

    def __init__(self, store: BatchStore):
        self.store = store
        self.settings = store.settings
        self._part_slots = threading.BoundedSemaphore(store.settings.batch_active_parts)
        self.stopping = threading.Event()

    def add_runners(self, batch_id: str, model: str) -> None:
        """Enqueue runners for ``model`` up to ``BATCH_ACTIVE_PARTS`` per live worker of it
        (and no more than it has parts waiting)."""
        live = self.store.redis.zcount(p.workers_key(model), p.now(), "+inf")
        target = self.settings.batch_active_parts * max(1, live)
        waiting = self.store.redis.llen(b.todo_key(batch_id, model))
        counter = b.runners_field(model)
        running = int(self.store.redis.hget(b.batch_key(batch_id), counter) or 0)
        for _ in range(min(target - running, waiting)):
            self.store.redis.hincrby(b.batch_key(batch_id), counter, 1)
            self.store.send_runner(batch_id, model, uuid.uuid4().hex)

    def run_runner(
        self, batch_id: str, model: str, runner_id: str, models: dict[str, LoadedModel]
    ) -> None:
        """Run ``model``'s parts of the batch one after another until none is left.

        A part holds a job thread for several forward passes; were every thread holding one,
        an interactive request would wait in Redis for a thread. So a worker runs at most
        ``BATCH_ACTIVE_PARTS`` parts at once (enough to keep the model's batches full); a
        runner finding no free slot within a second goes back to the queue as a new message
        (cheaper than a rejection, which Celery records with a formatted traceback), and so
        does every runner once the worker is shutting down (after its current part).
        """
        keys = [b.todo_key(batch_id, model), b.claims_key(batch_id)]
        while True:
            if self.stopping.is_set() or not self._part_slots.acquire(timeout=HAND_BACK_AFTER_SEC):
                why = "the worker is stopping" if self.stopping.is_set() else "no free part slot"
                log.info(
                    "batch %s: runner %s goes back to the queue (%s)", batch_id, runner_id, why
                )
                if self.store.redis.exists(b.batch_key(batch_id)):
                    self.store.send_runner(batch_id, model, runner_id)
                return
            try:
                index = self.store.claim(keys=keys, args=[runner_id])
                if index is None:
                    log.info("batch %s: runner %s found no part left", batch_id, runner_id)
                    if self.store.redis.exists(b.batch_key(batch_id)):
                        self.store.redis.hincrby(b.batch_key(batch_id), b.runners_field(model), -1)
                    return
                self.run_part(batch_id, int(index), models)
                self.store.redis.hdel(b.claims_key(batch_id), runner_id)
            finally:
                self._part_slots.release()
            self.add_runners(batch_id, model)  # workers may have joined since

    def run_part(self, batch_id: str, index: int, models: dict[str, LoadedModel]) -> None:
        if self.store.redis.sismember(b.done_parts_key(batch_id), index):
            return
        record = self.store.record(batch_id)
        if not record:
            return
        part = self.store.part(batch_id, index)
        if part is None:  # finalized (and cleaned up) meanwhile
            return
        lines = self.store.lines(record, part)
        if stopped(record):
            outputs, errors = [], [stopped_line(line["custom_id"], record) for line in lines]
        else:
            model = models[part["model"]]
            outputs, errors = self._execute(batch_id, record["endpoint"], lines, model)
        if self.store.settle(batch_id, index, outputs, errors):
            self.store.send_finalize(batch_id)

    def _execute(
        self, batch_id: str, endpoint: str, lines: list[dict], model: LoadedModel
    ) -> tuple[list[bytes], list[bytes]]:
        """Run a part's lines together; returns (output lines, error lines) as JSON."""
        try:
            runner = lines_for(p.Endpoint(endpoint), model, self.settings)
        except ServiceError as exc:
            return [], [output_line(line["custom_id"], exc.status, exc.body()) for line in lines]
        outputs: list[bytes] = []
        errors: list[bytes] = []
        requests: list[tuple[str, dict[str, Any]]] = []
        for line in lines:
            try:
                requests.append((line["custom_id"], runner.prepare(line["body"], model)))
            except Exception as exc:  # a check that trips over a body fails that line alone
                if not isinstance(exc, ServiceError):
                    log.exception("batch %s: checking line %r failed", batch_id, line["custom_id"])
                error = as_service_error(exc)
                errors.append(output_line(line["custom_id"], error.status, error.body()))
        if not requests:
            return outputs, errors
        with self._watch(batch_id) as stop:
            try:
                outcomes = runner.run([r for _, r in requests], model, stop)
            except Exception as exc:  # the whole part failed: every line goes to the error file
                log.exception("batch part failed")
                outcomes = [as_service_error(exc)] * len(requests)
        stopped_record = None
        for (custom_id, _), outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, ServiceError):
                errors.append(output_line(custom_id, outcome.status, outcome.body()))
            elif outcome is not None:
                outputs.append(output_line(custom_id, 200, outcome))
            else:  # stopped by a cancel or the expiry before it finished
                stopped_record = stopped_record or self.store.record(batch_id)
                errors.append(stopped_line(custom_id, stopped_record))
        return outputs, errors

    @contextmanager
    def _watch(self, batch_id: str) -> Iterator[threading.Event]:
        """An event set once the batch is cancelled or expires, checked every second while
        the part runs (running lines stop at their next batch or decoding step)."""
        stop, done = threading.Event(), threading.Event()

        def watch() -> None:
            while not done.wait(STOP_POLL_SEC):
                try:
                    record = self.store.record(batch_id)
                except Exception:  # Redis away for a moment: look again next time
                    continue
                if not record or stopped(record):
                    stop.set()
                    return

        watcher = threading.Thread(target=watch, name=f"watch:{batch_id}", daemon=True)
        watcher.start()
        try:
            yield stop
        finally:
            done.set()
