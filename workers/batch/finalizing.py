"""Finishing batches: the sweep of due ones (expired, cancelled, lost finalizes) and the
finalize step (unfinished lines settled, output and error files assembled, final status)."""

from __future__ import annotations

import logging

import redis

from inferq import batches as b
from inferq import protocol as p
from workers.batch.store import BatchStore, stopped, stopped_line

log = logging.getLogger(__name__)

SWEEP_RETRY_SEC = 60  # a due batch whose finalize did not happen is swept again after this
SWEEP_BATCHES = 50  # most due batches one sweep looks at
FINALIZE_LOCK_SEC = 900  # a finalize that died holds its batch this long, then the sweep retries


class Finalizer:
    def __init__(self, store: BatchStore):
        self.store = store
        self.settings = store.settings

    def sweep(self) -> None:
        """Finish the batches whose time is up, whether or not a runner is left to do it:
        expired ones and cancelled ones that no runner settled within ``STOP_GRACE_SEC``, and
        finalizes that died. Every worker runs this on each heartbeat; the finalize lock lets
        one of them act at a time."""
        due = self.store.redis.zrangebyscore(
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
                self.store.redis.zadd(b.open_batches_key(), {batch_id: p.now() + SWEEP_RETRY_SEC})

    def _sweep_one(self, batch_id: str) -> None:
        record = self.store.record(batch_id)
        status = record.get("status")
        if status is None:  # the record expired (its input's hold with it)
            self.store.redis.zrem(b.open_batches_key(), batch_id)
        elif status in b.FINAL_STATUSES:  # a finalize that died before it let go of the input
            self.store.release_input(batch_id, record["input_file_id"])
        elif status == b.BatchStatus.VALIDATING:  # the plan task was lost: plan again
            self.store.redis.zadd(b.open_batches_key(), {batch_id: p.now() + SWEEP_RETRY_SEC})
            self.store.send_plan(batch_id)
        elif status == b.BatchStatus.FINALIZING or stopped(record):
            self.store.redis.zadd(b.open_batches_key(), {batch_id: p.now() + SWEEP_RETRY_SEC})
            log.info("batch %s is due (%s): finalizing", batch_id, status)
            self.store.send_finalize(batch_id)
        else:  # not due after all
            due = b.due_after_expiry(record["expires_at"])
            self.store.redis.zadd(b.open_batches_key(), {batch_id: due})

    def finalize(self, batch_id: str) -> None:
        lock = f"{b.batch_key(batch_id)}:finalizing"
        if not self.store.redis.set(lock, 1, nx=True, ex=FINALIZE_LOCK_SEC):
            return
        try:
            self._finalize(batch_id)
        finally:
            self.store.redis.delete(lock)

    def _finalize(self, batch_id: str) -> None:
        """Settle what a stop left, assemble the files, reach the final status. Runs again
        safely after a crash: a batch left ``finalizing`` is finished by the next run."""
        record = self.store.record(batch_id)
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
            if not self.store.transition(
                batch_id, [b.BatchStatus.IN_PROGRESS], b.BatchStatus.FINALIZING, "finalizing_at"
            ):
                return  # cancelled meanwhile: the cancel's finalize finishes it
            record = self.store.record(batch_id)
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
        self.store.redis.zadd(b.open_batches_key(), {batch_id: retry_at})
        if final != b.BatchStatus.COMPLETED:  # lines no runner got to go to the error file
            self._settle_unfinished(batch_id, record, parts)
        owner = record["owner"]
        ttl = int(record.get("output_expires_after") or self.settings.file_ttl_sec)
        output_id = self._assemble(batch_id, parts, b.part_output_key, owner, "output", ttl)
        error_id = self._assemble(batch_id, parts, b.part_errors_key, owner, "error", ttl)
        self.store.redis.hset(
            b.batch_key(batch_id),
            mapping={"output_file_id": output_id or "", "error_file_id": error_id or ""},
        )
        self.store.transition(batch_id, [status], final, stamp)
        cleanup = [b.parts_key(batch_id), b.done_parts_key(batch_id), b.claims_key(batch_id)]
        cleanup += [b.todo_key(batch_id, m) for m in p.loads(record.get("models") or "[]")]
        for index in range(parts):
            cleanup += [b.part_output_key(batch_id, index), b.part_errors_key(batch_id, index)]
        self.store.redis.delete(*cleanup)
        self.store.release_input(batch_id, record["input_file_id"])  # and closes the batch
        log.info("batch %s %s", batch_id, final)

    def _settle_unfinished(self, batch_id: str, record: dict[str, str], parts: int) -> None:
        """Settle every part no runner has recorded: each of its lines becomes a
        batch_cancelled / batch_expired error (a runner still inside one loses the race)."""
        done = {int(i) for i in self.store.redis.smembers(b.done_parts_key(batch_id))}
        for index in range(parts):
            part = None if index in done else self.store.part(batch_id, index)
            if part is not None:
                lines = self.store.lines(record, part)
                errors = [stopped_line(line["custom_id"], record) for line in lines]
                self.store.settle(batch_id, index, [], errors)

    def _assemble(
        self, batch_id: str, parts: int, key_of, owner: str, kind: str, ttl: int
    ) -> str | None:
        """Concatenate the parts' lines, in order, into a new file kept ``ttl`` seconds; None
        when there are none."""
        if not any(self.store.redis.exists(key_of(batch_id, i)) for i in range(parts)):
            return None
        file_id = b.new_file_id()
        writer = self.store.blobs.writer(file_id, ttl=ttl)
        for index in range(parts):
            key, start = key_of(batch_id, index), 0
            while page := self.store.redis.lrange(key, start, start + 99):
                for line in page:
                    writer.write(line + b"\n")
                start += len(page)
        size = writer.close()
        now = int(p.now())
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hset(
            b.file_key(file_id),
            mapping={
                "id": file_id,
                "bytes": size,
                "created_at": now,
                "filename": f"{batch_id}_{kind}.jsonl",
                "purpose": "batch_output",
                "expires_at": now + ttl,
                "owner": owner,
            },
        )
        pipe.expire(b.file_key(file_id), ttl)
        pipe.zadd(b.files_index_key(owner), {file_id: int(p.now() * 1000)})
        pipe.execute()
        return file_id
