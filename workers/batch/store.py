"""A batch's records in Redis as the worker's steps read and settle them."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from celery import Celery

from inferq import batches as b
from inferq import protocol as p
from inferq.blobs import Blobs, blob_key
from inferq.settings import Settings


class BatchStore:
    """The batch hash, its parts and their settled lines; sends the batch's Celery tasks."""

    def __init__(self, redis_client, settings: Settings, celery: Celery):
        self.redis = redis_client
        self.settings = settings
        self.celery = celery
        self.blobs = Blobs(redis_client)
        self._record = redis_client.register_script(b.RECORD_PART_SCRIPT)
        self.claim = redis_client.register_script(b.CLAIM_PART_SCRIPT)
        self._transition = redis_client.register_script(b.TRANSITION_SCRIPT)
        self._release_input = redis_client.register_script(b.RELEASE_INPUT_SCRIPT)

    def record(self, batch_id: str) -> dict[str, str]:
        return b.decode(self.redis.hgetall(b.batch_key(batch_id)))

    def transition(self, batch_id: str, expected: list[str], status: str, field_name: str) -> bool:
        return bool(
            self._transition(
                keys=[b.batch_key(batch_id)],
                args=[",".join(expected), status, field_name, int(p.now())],
            )
        )

    def release_input(self, batch_id: str, file_id: str) -> None:
        """A batch that ends leaves the open batches and lets go of its input file's bytes
        (held since its creation, see ``HOLD_INPUT_SCRIPT``): once no other open batch reads
        them, they expire with the file, or go now if the file was deleted or expired."""
        self._release_input(
            keys=[b.open_batches_key(), b.file_key(file_id), blob_key(file_id)],
            args=b.input_in_use_args(file_id, batch_id),
        )

    def part(self, batch_id: str, index: int) -> dict[str, Any] | None:
        raw = self.redis.hget(b.parts_key(batch_id), index)
        return orjson.loads(raw) if raw else None

    def lines(self, record: dict[str, str], part: dict[str, Any]) -> list[dict]:
        """A part's requests, read from its byte range of the input file."""
        raw_lines = self.blobs.lines(record["input_file_id"], part["start"], part["end"])
        return [orjson.loads(raw) for raw in raw_lines if raw.strip()]

    def settle(self, batch_id: str, index: int, outputs: list[bytes], errors: list[bytes]) -> bool:
        """Record a part's lines (once, whoever gets there first); True if it was the last.
        The batch's usage grows by the usage of the output lines."""
        tokens = [b.line_tokens(orjson.loads(line)["response"]["body"]) for line in outputs]
        input_tokens = sum(t[0] for t in tokens)
        output_tokens = sum(t[1] for t in tokens)
        settled_last = self._record(
            keys=[
                b.batch_key(batch_id),
                b.done_parts_key(batch_id),
                b.part_output_key(batch_id, index),
                b.part_errors_key(batch_id, index),
            ],
            args=[index, len(outputs), len(errors), input_tokens, output_tokens, *outputs, *errors],
        )
        return settled_last == 1

    def send_finalize(self, batch_id: str) -> None:
        self.celery.send_task(b.TASK_FINALIZE, args=[batch_id], queue=b.CONTROL_QUEUE)

    def send_plan(self, batch_id: str) -> None:
        self.celery.send_task(b.TASK_PLAN, args=[batch_id], queue=b.CONTROL_QUEUE)

    def send_runner(self, batch_id: str, model: str, runner_id: str) -> None:
        self.celery.send_task(
            b.TASK_RUNNER,
            args=[batch_id, model, runner_id],
            queue=p.queue_name(model),
            priority=int(p.Priority.BULK),
        )


def stopped(record: dict[str, str]) -> bool:
    """Whether a batch's parts should stop starting (and running) lines."""
    return record["status"] in b.STOPPED_STATUSES or p.now() > int(record["expires_at"])


def stopped_line(custom_id: str, record: dict[str, str] | None) -> bytes:
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


def output_line(custom_id: str, status: int, body: dict[str, Any]) -> bytes:
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
