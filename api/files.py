"""The API's side of files and batches (records in Redis, bytes in the blob store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from api.queue import JobQueue
from inferq import batches as b
from inferq import protocol as p
from inferq.blobs import AsyncBlobs, blob_key
from inferq.errors import ServiceError, bad_request


def file_not_found(file_id: str) -> ServiceError:
    return ServiceError(404, f"no file '{file_id}'", param="file_id", code="file_not_found")


def batch_not_found(batch_id: str) -> ServiceError:
    return ServiceError(404, f"no batch '{batch_id}'", param="batch_id", code="batch_not_found")


UPLOAD_OVERHEAD = 64 * 1024  # multipart framing and form fields beside the file


def too_large(limit: int) -> ServiceError:
    return ServiceError(
        413, f"the file is larger than the {limit}-byte limit", param="file", code="file_too_large"
    )


class FilesAndBatches:
    def __init__(self, queue: JobQueue):
        self.queue = queue
        self.redis = queue.redis
        self.settings = queue.settings
        self.blobs = AsyncBlobs(queue.redis)
        self._transition = queue.redis.register_script(b.TRANSITION_SCRIPT)
        self._input_in_use = queue.redis.register_script(b.INPUT_IN_USE_SCRIPT)
        self._hold_input = queue.redis.register_script(b.HOLD_INPUT_SCRIPT)

    # --- files -------------------------------------------------------------------------------

    async def record_file(
        self, file_id: str, *, size: int, filename: str, purpose: str, owner: str
    ) -> dict[str, Any]:
        """The record of an upload already stored as blob ``file_id`` (see api.routes.files)."""
        ttl = self.settings.file_ttl_sec
        now = int(p.now())
        record = {
            "id": file_id,
            "bytes": size,
            "created_at": now,
            "filename": filename,
            "purpose": purpose,
            "expires_at": now + ttl,
            "owner": owner,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(b.file_key(file_id), mapping=record)
        pipe.expire(b.file_key(file_id), ttl)
        pipe.zadd(b.files_index_key(owner), {file_id: int(p.now() * 1000)})
        await pipe.execute()
        return b.render_file({k: str(v) for k, v in record.items()})

    async def file(self, file_id: str, owner: str) -> dict[str, str]:
        if not p.names_a_record(file_id):
            raise file_not_found(file_id)
        record = b.decode(await self.redis.hgetall(b.file_key(file_id)))
        if not record or record.get("owner") != owner:
            raise file_not_found(file_id)
        return record

    async def list_files(
        self, owner: str, *, purpose: str | None, limit: int, after: str | None, order: str
    ) -> tuple[list[dict[str, str]], bool]:
        return await self._page(b.files_index_key(owner), b.file_key, limit, after, order, purpose)

    async def delete_file(self, file_id: str, owner: str) -> None:
        """The file is gone at once; its bytes stay while an open batch reads them (its parts
        read their lines when they run), and that batch's finalize deletes them."""
        await self.file(file_id, owner)
        await self.redis.delete(b.file_key(file_id))
        await self.redis.zrem(b.files_index_key(owner), file_id)
        in_use = await self._input_in_use(
            keys=[b.open_batches_key()], args=b.input_in_use_args(file_id)
        )
        if not in_use:
            await self.blobs.delete(file_id)

    def content(self, file_id: str) -> AsyncIterator[bytes]:
        return self.blobs.read(file_id)

    # --- batches -----------------------------------------------------------------------------

    async def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        owner: str,
        output_expires_after: int | None = None,
    ) -> dict[str, Any]:
        """``output_expires_after``: seconds the output and error files are kept (else
        ``FILE_TTL_SEC``)."""
        if endpoint not in b.BATCH_ENDPOINTS:
            allowed = ", ".join(e.value for e in b.BATCH_ENDPOINTS)
            raise bad_request(f"endpoint must be one of {allowed}", param="endpoint")
        if completion_window != "24h":
            raise bad_request("completion_window must be '24h'", param="completion_window")
        source = await self.file(input_file_id, owner)
        if source["purpose"] != "batch":
            raise bad_request(
                f"file '{input_file_id}' has purpose '{source['purpose']}', not 'batch'",
                param="input_file_id",
            )
        batch_id = b.new_batch_id()
        now = int(p.now())
        record = {
            "id": batch_id,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": b.BatchStatus.VALIDATING.value,
            "created_at": now,
            "expires_at": now + self.settings.batch_expiry_sec,
            "metadata": p.dumps(metadata).decode() if metadata else "",
            "output_expires_after": output_expires_after or "",
            "owner": owner,
            "total": 0,
            "completed": 0,
            "failed": 0,
        }
        ttl = b.batch_record_ttl(
            self.settings.file_ttl_sec, self.settings.batch_expiry_sec, output_expires_after
        )
        pipe = self.redis.pipeline(transaction=True)
        # One transaction: a finalize releasing the same file sees this batch open or no hold.
        await self._hold_input(
            keys=[b.file_key(input_file_id), blob_key(input_file_id)], args=[ttl], client=pipe
        )
        pipe.hset(b.batch_key(batch_id), mapping=record)
        pipe.expire(b.batch_key(batch_id), ttl)
        pipe.zadd(b.batches_index_key(owner), {batch_id: int(p.now() * 1000)})
        pipe.zadd(b.open_batches_key(), {batch_id: b.due_after_expiry(record["expires_at"])})
        held, *_ = await pipe.execute()
        if not held:  # the file expired (or was deleted) since it was read: no batch then
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(b.batch_key(batch_id))
            pipe.zrem(b.batches_index_key(owner), batch_id)
            pipe.zrem(b.open_batches_key(), batch_id)
            await pipe.execute()
            raise file_not_found(input_file_id)
        await asyncio.to_thread(
            self.queue.celery.send_task, b.TASK_PLAN, args=[batch_id], queue=b.CONTROL_QUEUE
        )
        return b.render_batch({k: str(v) for k, v in record.items()})

    async def batch(self, batch_id: str, owner: str) -> dict[str, str]:
        if not p.names_a_record(batch_id):
            raise batch_not_found(batch_id)
        record = b.decode(await self.redis.hgetall(b.batch_key(batch_id)))
        if not record or record.get("owner") != owner:
            raise batch_not_found(batch_id)
        return record

    async def list_batches(
        self, owner: str, *, limit: int, after: str | None
    ) -> tuple[list[dict[str, str]], bool]:
        return await self._page(b.batches_index_key(owner), b.batch_key, limit, after, "desc", None)

    async def cancel_batch(self, batch_id: str, owner: str) -> dict[str, str]:
        await self.batch(batch_id, owner)
        moved = await self._transition(
            keys=[b.batch_key(batch_id)],
            args=[
                f"{b.BatchStatus.VALIDATING},{b.BatchStatus.IN_PROGRESS}",
                b.BatchStatus.CANCELLING.value,
                "cancelling_at",
                int(p.now()),
            ],
        )
        if moved:  # the sweep finishes the cancel should no runner settle the parts
            await self.redis.zadd(b.open_batches_key(), {batch_id: p.now() + b.STOP_GRACE_SEC})
        record = await self.batch(batch_id, owner)
        if not moved and record["status"] not in (
            b.BatchStatus.CANCELLING,
            b.BatchStatus.CANCELLED,
        ):
            raise ServiceError(
                409,
                f"batch '{batch_id}' is {record['status']} and can no longer be cancelled",
                code="batch_not_cancellable",
                final=True,
            )
        if moved and record.get("parts") in (None, "", "0"):
            # Nothing was queued yet (still validating): the planner will finalize on seeing
            # the status, but make sure it happens even if it already ran.
            await asyncio.to_thread(
                self.queue.celery.send_task,
                b.TASK_FINALIZE,
                args=[batch_id],
                queue=b.CONTROL_QUEUE,
            )
        return record

    # --- shared ------------------------------------------------------------------------------

    async def _page(self, index, key_of, limit, after, order, purpose):
        """A page of an owner's records from a sorted-set index (expired entries dropped)."""
        newest_first = order == "desc"
        rank_of = self.redis.zrevrank if newest_first else self.redis.zrank
        range_of = self.redis.zrevrange if newest_first else self.redis.zrange
        start = 0
        if after is not None:
            rank = await rank_of(index, after)
            if rank is None:
                raise bad_request(f"'after' names an unknown id '{after}'", param="after")
            start = rank + 1
        records, stale = [], []
        while len(records) <= limit:
            ids = await range_of(index, start, start + limit)
            if not ids:
                break
            start += len(ids)
            for item in ids:
                record = b.decode(await self.redis.hgetall(key_of(item.decode())))
                if not record:
                    stale.append(item)
                elif not purpose or record.get("purpose") == purpose:
                    records.append(record)
        if stale:
            await self.redis.zrem(index, *stale)
        return records[:limit], len(records) > limit
