"""Running OpenAI batches: plan (validate + cut into parts), run parts, finalize.

See ``inferq/batches.py`` for the flow and the Redis layout. Every step is safe to repeat:
a redelivered ``plan`` finds the batch no longer ``validating``; a redelivered ``part`` is
recorded once by ``RECORD_PART_SCRIPT``; ``finalize`` runs under a lock and only from a
non-final status.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from celery import Celery

from inferq import batches as b
from inferq import protocol as p
from inferq.blobs import Blobs
from inferq.catalog import Catalog
from inferq.errors import ServiceError
from inferq.settings import Settings
from workers.batch_lines import lines_for
from workers.jobs import as_service_error
from workers.registry import LoadedModel

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 100
STOP_POLL_SEC = 1.0  # a running part re-reads its batch's status this often
HAND_BACK_AFTER_SEC = 1.0  # a runner waits this long for a free part slot, then goes back
SWEEP_RETRY_SEC = 60  # a due batch whose finalize did not happen is swept again after this
SWEEP_BATCHES = 50  # most due batches one sweep looks at
FINALIZE_LOCK_SEC = 900  # a finalize that died holds its batch this long, then the sweep retries


@dataclass
class _Part:
    model: str
    start: int
    end: int = 0
    lines: int = 0
    inputs: int = 0
    first_line: int = 0


@dataclass
class _Plan:
    parts: list[_Part] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0


def _line_inputs(endpoint: str, body: dict[str, Any], settings: Settings) -> int:
    """A line's weight against ``BATCH_PART_INPUTS``: its texts, documents, or for chat a
    share that makes ``BATCH_PART_CHAT_LINES`` lines fill a part (each is a generation)."""
    if endpoint == p.Endpoint.CHAT:
        return max(1, settings.batch_part_inputs // max(1, settings.batch_part_chat_lines))
    if endpoint == p.Endpoint.EMBEDDINGS:
        value = body.get("input")
        return len(value) if isinstance(value, list) else 1
    documents = body.get("documents")
    return len(documents) if isinstance(documents, list) else 1


def _check_line(
    raw: bytes, number: int, endpoint: str, seen: set[str], catalog: Catalog
) -> tuple[str, dict[str, Any]]:
    """(model name, body) of a valid line, else ValueError(code, message, param)."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("invalid_json", f"line {number} is not valid JSON", None) from None
    if not isinstance(line, dict):
        raise ValueError("invalid_request", f"line {number} is not a JSON object", None)
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise ValueError("missing_custom_id", f"line {number} has no 'custom_id'", "custom_id")
    if custom_id in seen:
        raise ValueError(
            "duplicate_custom_id", f"line {number} repeats custom_id '{custom_id}'", "custom_id"
        )
    seen.add(custom_id)
    if line.get("method") != "POST":
        raise ValueError("invalid_method", f"line {number}: 'method' must be POST", "method")
    if line.get("url") != endpoint:
        raise ValueError(
            "mismatched_url",
            f"line {number}: 'url' {line.get('url')!r} differs from the batch endpoint {endpoint}",
            "url",
        )
    body = line.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise ValueError("invalid_body", f"line {number}: 'body' needs a 'model'", "body")
    entry = catalog.get(body["model"])
    if entry is None:
        raise ValueError(
            "model_not_found", f"line {number}: model '{body['model']}' is not served", "body.model"
        )
    return entry.name, body


def make_plan(blobs: Blobs, record: dict[str, str], catalog: Catalog, settings: Settings) -> _Plan:
    """Validate every line (streaming) and cut the file into parts of consecutive lines."""
    plan, seen = _Plan(), set()
    endpoint = record["endpoint"]
    offset, number, current = 0, 0, None
    for raw in blobs.lines(record["input_file_id"]):
        start, offset = offset, offset + len(raw) + 1
        number += 1
        if not raw.strip():
            continue
        plan.lines += 1
        if plan.lines > settings.max_batch_lines:
            plan.errors.append(
                {
                    "code": "too_many_requests",
                    "message": f"the file has more than {settings.max_batch_lines} requests",
                    "param": None,
                    "line": number,
                }
            )
            break
        try:
            model, body = _check_line(raw, number, endpoint, seen, catalog)
        except ValueError as exc:
            code, message, param = exc.args
            if len(plan.errors) < MAX_REPORTED_ERRORS:
                plan.errors.append(
                    {"code": code, "message": message, "param": param, "line": number}
                )
            continue
        if plan.errors:
            continue  # still validating the rest, but no point cutting parts
        inputs = _line_inputs(endpoint, body, settings)
        if (
            current is None
            or current.model != model
            or current.lines >= settings.batch_part_lines
            or (current.lines and current.inputs + inputs > settings.batch_part_inputs)
        ):
            current = _Part(model=model, start=start, first_line=number)
            plan.parts.append(current)
        current.end = offset
        current.lines += 1
        current.inputs += inputs
    if not plan.lines and not plan.errors:
        plan.errors.append(
            {
                "code": "empty_file",
                "message": "the input file has no requests",
                "param": None,
                "line": None,
            }
        )
    return plan


class BatchRunner:
    """The worker's side of the Batch API."""

    def __init__(self, redis_client, settings: Settings, celery: Celery, catalog_loader):
        self.redis = redis_client
        self.settings = settings
        self.celery = celery
        self.blobs = Blobs(redis_client)
        self._catalog_loader = catalog_loader
        self._record = redis_client.register_script(b.RECORD_PART_SCRIPT)
        self._claim = redis_client.register_script(b.CLAIM_PART_SCRIPT)
        self._part_slots = threading.BoundedSemaphore(settings.batch_active_parts)
        self.stopping = threading.Event()  # the worker is shutting down
        self._transition = redis_client.register_script(b.TRANSITION_SCRIPT)

    def record(self, batch_id: str) -> dict[str, str]:
        return b.decode(self.redis.hgetall(b.batch_key(batch_id)))

    def transition(self, batch_id: str, expected: list[str], status: str, field_name: str) -> bool:
        return bool(
            self._transition(
                keys=[b.batch_key(batch_id)],
                args=[",".join(expected), status, field_name, int(p.now())],
            )
        )

    # --- plan --------------------------------------------------------------------------------

    def plan(self, batch_id: str) -> None:
        record = self.record(batch_id)
        if not record:
            return
        if record["status"] == b.BatchStatus.CANCELLING:
            self._send_finalize(batch_id)
            return
        if record["status"] == b.BatchStatus.IN_PROGRESS:  # a redelivery: runners sent?
            for model in p.loads(record.get("models") or "[]"):
                self._add_runners(batch_id, model)
            return
        if record["status"] != b.BatchStatus.VALIDATING:
            return  # planned already (a redelivery)
        plan = make_plan(self.blobs, record, self._catalog_loader(), self.settings)
        key = b.batch_key(batch_id)
        if plan.errors:
            self.redis.hset(
                key,
                mapping={"errors": p.dumps({"object": "list", "data": plan.errors}), "total": 0},
            )
            self.transition(batch_id, [b.BatchStatus.VALIDATING], b.BatchStatus.FAILED, "failed_at")
            self.redis.zrem(b.open_batches_key(), batch_id)
            log.info("batch %s failed validation: %s", batch_id, plan.errors[0]["message"])
            return
        ttl = max(1, self.redis.ttl(key))
        models = sorted({part.model for part in plan.parts})
        pipe = self.redis.pipeline(transaction=True)
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
        if not self.transition(
            batch_id, [b.BatchStatus.VALIDATING], b.BatchStatus.IN_PROGRESS, "in_progress_at"
        ):
            self._send_finalize(batch_id)  # cancelled while validating
            return
        for model in models:
            self._add_runners(batch_id, model)
        log.info("batch %s: %d lines in %d parts", batch_id, plan.lines, len(plan.parts))

    # --- runners and parts -------------------------------------------------------------------

    def _add_runners(self, batch_id: str, model: str) -> None:
        """Enqueue runners for ``model`` up to ``BATCH_ACTIVE_PARTS`` per live worker of it
        (and no more than it has parts waiting)."""
        live = self.redis.zcount(p.workers_key(model), p.now(), "+inf")
        target = self.settings.batch_active_parts * max(1, live)
        waiting = self.redis.llen(b.todo_key(batch_id, model))
        counter = b.runners_field(model)
        running = int(self.redis.hget(b.batch_key(batch_id), counter) or 0)
        for _ in range(min(target - running, waiting)):
            self.redis.hincrby(b.batch_key(batch_id), counter, 1)
            self._send_runner(batch_id, model, uuid.uuid4().hex)

    def _send_runner(self, batch_id: str, model: str, runner_id: str) -> None:
        self.celery.send_task(
            b.TASK_RUNNER,
            args=[batch_id, model, runner_id],
            queue=p.queue_name(model),
            priority=int(p.Priority.BULK),
        )

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
                if self.redis.exists(b.batch_key(batch_id)):
                    self._send_runner(batch_id, model, runner_id)
                return
            try:
                index = self._claim(keys=keys, args=[runner_id])
                if index is None:
                    log.info("batch %s: runner %s found no part left", batch_id, runner_id)
                    if self.redis.exists(b.batch_key(batch_id)):
                        self.redis.hincrby(b.batch_key(batch_id), b.runners_field(model), -1)
                    return
                self.run_part(batch_id, int(index), models)
                self.redis.hdel(b.claims_key(batch_id), runner_id)
            finally:
                self._part_slots.release()
            self._add_runners(batch_id, model)  # workers may have joined since

    def run_part(self, batch_id: str, index: int, models: dict[str, LoadedModel]) -> None:
        if self.redis.sismember(b.done_parts_key(batch_id), index):
            return
        record = self.record(batch_id)
        if not record:
            return
        part = self._part(batch_id, index)
        if part is None:  # finalized (and cleaned up) meanwhile
            return
        lines = self._lines(record, part)
        if _stopped(record):
            outputs, errors = [], [_stopped_line(line["custom_id"], record) for line in lines]
        else:
            model = models[part["model"]]
            outputs, errors = self._execute(batch_id, record["endpoint"], lines, model)
        if self._settle(batch_id, index, outputs, errors):
            self._send_finalize(batch_id)

    def _part(self, batch_id: str, index: int) -> dict[str, Any] | None:
        raw = self.redis.hget(b.parts_key(batch_id), index)
        return orjson.loads(raw) if raw else None

    def _lines(self, record: dict[str, str], part: dict[str, Any]) -> list[dict]:
        """A part's requests, read from its byte range of the input file."""
        raw_lines = self.blobs.lines(record["input_file_id"], part["start"], part["end"])
        return [orjson.loads(raw) for raw in raw_lines if raw.strip()]

    def _settle(self, batch_id: str, index: int, outputs: list[bytes], errors: list[bytes]) -> bool:
        """Record a part's lines (once, whoever gets there first); True if it was the last."""
        settled_last = self._record(
            keys=[
                b.batch_key(batch_id),
                b.done_parts_key(batch_id),
                b.part_output_key(batch_id, index),
                b.part_errors_key(batch_id, index),
            ],
            args=[index, len(outputs), len(errors), *outputs, *errors],
        )
        return settled_last == 1

    def _execute(
        self, batch_id: str, endpoint: str, lines: list[dict], model: LoadedModel
    ) -> tuple[list[bytes], list[bytes]]:
        """Run a part's lines together; returns (output lines, error lines) as JSON."""
        try:
            runner = lines_for(p.Endpoint(endpoint), model, self.settings)
        except ServiceError as exc:
            return [], [_output_line(line["custom_id"], exc.status, exc.body()) for line in lines]
        outputs: list[bytes] = []
        errors: list[bytes] = []
        requests: list[tuple[str, dict[str, Any]]] = []
        for line in lines:
            try:
                requests.append((line["custom_id"], runner.prepare(line["body"], model)))
            except ServiceError as exc:
                errors.append(_output_line(line["custom_id"], exc.status, exc.body()))
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
                errors.append(_output_line(custom_id, outcome.status, outcome.body()))
            elif outcome is not None:
                outputs.append(_output_line(custom_id, 200, outcome))
            else:  # stopped by a cancel or the expiry before it finished
                stopped_record = stopped_record or self.record(batch_id)
                errors.append(_stopped_line(custom_id, stopped_record))
        return outputs, errors

    @contextmanager
    def _watch(self, batch_id: str) -> Iterator[threading.Event]:
        """An event set once the batch is cancelled or expires, checked every second while
        the part runs (running lines stop at their next batch or decoding step)."""
        stop, done = threading.Event(), threading.Event()

        def watch() -> None:
            while not done.wait(STOP_POLL_SEC):
                try:
                    record = self.record(batch_id)
                except Exception:  # Redis away for a moment: look again next time
                    continue
                if not record or _stopped(record):
                    stop.set()
                    return

        watcher = threading.Thread(target=watch, name=f"watch:{batch_id}", daemon=True)
        watcher.start()
        try:
            yield stop
        finally:
            done.set()

    # --- finalize ----------------------------------------------------------------------------

    def sweep(self) -> None:
        """Finish the batches whose time is up, whether or not a runner is left to do it:
        expired ones and cancelled ones that no runner settled within ``STOP_GRACE_SEC``, and
        finalizes that died. Every worker runs this on each heartbeat; the finalize lock lets
        one of them act at a time."""
        due = self.redis.zrangebyscore(
            b.open_batches_key(), "-inf", p.now(), start=0, num=SWEEP_BATCHES
        )
        for raw_id in due:
            batch_id = raw_id.decode()
            try:
                self._sweep_one(batch_id)
            except redis.RedisError:
                raise
            except Exception:  # one odd record must not block the others
                log.exception("sweeping batch %s failed", batch_id)
                self.redis.zadd(b.open_batches_key(), {batch_id: p.now() + SWEEP_RETRY_SEC})

    def _sweep_one(self, batch_id: str) -> None:
        record = self.record(batch_id)
        status = record.get("status")
        if status is None or status in b.FINAL_STATUSES:
            self.redis.zrem(b.open_batches_key(), batch_id)
        elif status == b.BatchStatus.VALIDATING:  # the plan task was lost: plan again
            self.redis.zadd(b.open_batches_key(), {batch_id: p.now() + SWEEP_RETRY_SEC})
            self.celery.send_task(b.TASK_PLAN, args=[batch_id], queue=b.CONTROL_QUEUE)
        elif status == b.BatchStatus.FINALIZING or _stopped(record):
            self.redis.zadd(b.open_batches_key(), {batch_id: p.now() + SWEEP_RETRY_SEC})
            log.info("batch %s is due (%s): finalizing", batch_id, status)
            self._send_finalize(batch_id)
        else:  # not due after all
            due = b.due_after_expiry(record["expires_at"])
            self.redis.zadd(b.open_batches_key(), {batch_id: due})

    def _send_finalize(self, batch_id: str) -> None:
        self.celery.send_task(b.TASK_FINALIZE, args=[batch_id], queue=b.CONTROL_QUEUE)

    def finalize(self, batch_id: str) -> None:
        lock = f"{b.batch_key(batch_id)}:finalizing"
        if not self.redis.set(lock, 1, nx=True, ex=FINALIZE_LOCK_SEC):
            return
        try:
            self._finalize(batch_id)
        finally:
            self.redis.delete(lock)

    def _finalize(self, batch_id: str) -> None:
        """Settle what a stop left, assemble the files, reach the final status. Runs again
        safely after a crash: a batch left ``finalizing`` is finished by the next run."""
        record = self.record(batch_id)
        status = record.get("status")
        parts = int(record.get("parts") or 0)
        if status not in (
            b.BatchStatus.IN_PROGRESS,
            b.BatchStatus.CANCELLING,
            b.BatchStatus.FINALIZING,
        ):
            return  # validating (the plan finishes it), or final already
        if status == b.BatchStatus.IN_PROGRESS:
            expired = p.now() > int(record["expires_at"])
            if not expired and int(record.get("parts_settled") or 0) < parts:
                return  # a stray finalize: the last part to settle sends another
            if not self.transition(
                batch_id, [b.BatchStatus.IN_PROGRESS], b.BatchStatus.FINALIZING, "finalizing_at"
            ):
                return  # cancelled meanwhile: the cancel's finalize finishes it
            record = self.record(batch_id)
            status = record["status"]
        if status == b.BatchStatus.CANCELLING:
            final, stamp = b.BatchStatus.CANCELLED, "cancelled_at"
        elif status == b.BatchStatus.FINALIZING:
            if int(record["finalizing_at"]) > int(record["expires_at"]):
                final, stamp = b.BatchStatus.EXPIRED, "expired_at"
            else:
                final, stamp = b.BatchStatus.COMPLETED, "completed_at"
        else:
            return
        # Should this run die, the sweep finalizes again once the lock is gone.
        retry_at = p.now() + FINALIZE_LOCK_SEC + SWEEP_RETRY_SEC
        self.redis.zadd(b.open_batches_key(), {batch_id: retry_at})
        if final != b.BatchStatus.COMPLETED:  # lines no runner got to go to the error file
            self._settle_unfinished(batch_id, record, parts)
        owner = record["owner"]
        output_id = self._assemble(batch_id, parts, b.part_output_key, owner, "output")
        error_id = self._assemble(batch_id, parts, b.part_errors_key, owner, "error")
        self.redis.hset(
            b.batch_key(batch_id),
            mapping={"output_file_id": output_id or "", "error_file_id": error_id or ""},
        )
        self.transition(batch_id, [status], final, stamp)
        cleanup = [b.parts_key(batch_id), b.done_parts_key(batch_id), b.claims_key(batch_id)]
        cleanup += [b.todo_key(batch_id, m) for m in p.loads(record.get("models") or "[]")]
        for index in range(parts):
            cleanup += [b.part_output_key(batch_id, index), b.part_errors_key(batch_id, index)]
        self.redis.delete(*cleanup)
        self.redis.zrem(b.open_batches_key(), batch_id)
        log.info("batch %s %s", batch_id, final)

    def _settle_unfinished(self, batch_id: str, record: dict[str, str], parts: int) -> None:
        """Settle every part no runner has recorded: each of its lines becomes a
        batch_cancelled / batch_expired error (a runner still inside one loses the race)."""
        done = {int(i) for i in self.redis.smembers(b.done_parts_key(batch_id))}
        for index in range(parts):
            part = None if index in done else self._part(batch_id, index)
            if part is not None:
                lines = self._lines(record, part)
                errors = [_stopped_line(line["custom_id"], record) for line in lines]
                self._settle(batch_id, index, [], errors)

    def _assemble(self, batch_id: str, parts: int, key_of, owner: str, kind: str) -> str | None:
        """Concatenate the parts' lines, in order, into a new file; None when there are none."""
        if not any(self.redis.exists(key_of(batch_id, i)) for i in range(parts)):
            return None
        file_id = b.new_file_id()
        writer = self.blobs.writer(file_id, ttl=self.settings.file_ttl_sec)
        for index in range(parts):
            key, start = key_of(batch_id, index), 0
            while page := self.redis.lrange(key, start, start + 99):
                for line in page:
                    writer.write(line + b"\n")
                start += len(page)
        size = writer.close()
        now = int(p.now())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            b.file_key(file_id),
            mapping={
                "id": file_id,
                "bytes": size,
                "created_at": now,
                "filename": f"{batch_id}_{kind}.jsonl",
                "purpose": "batch_output",
                "expires_at": now + self.settings.file_ttl_sec,
                "owner": owner,
            },
        )
        pipe.expire(b.file_key(file_id), self.settings.file_ttl_sec)
        pipe.zadd(b.files_index_key(owner), {file_id: int(p.now() * 1000)})
        pipe.execute()
        return file_id


def _stopped(record: dict[str, str]) -> bool:
    """Whether a batch's parts should stop starting (and running) lines."""
    return record["status"] in b.STOPPED_STATUSES or p.now() > int(record["expires_at"])


def _stopped_line(custom_id: str, record: dict[str, str] | None) -> bytes:
    """The error-file line of a request that a cancel or the expiry kept from running (a
    batch gone from Redis counts as cancelled)."""
    cancelled = not record or record.get("status") in (
        b.BatchStatus.CANCELLING,
        b.BatchStatus.CANCELLED,
    )
    return p.dumps(
        {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": custom_id,
            "response": None,
            "error": b.CANCELLED_LINE_ERROR if cancelled else b.EXPIRED_LINE_ERROR,
        }
    )


def _output_line(custom_id: str, status: int, body: dict[str, Any]) -> bytes:
    return p.dumps(
        {
            "id": f"batch_req_{uuid.uuid4().hex}",
            "custom_id": custom_id,
            "response": {
                "status_code": status,
                "request_id": f"req_{uuid.uuid4().hex}",
                "body": body,
            },
            "error": None,
        }
    )
