"""The API's side of the queue protocol: create jobs, enqueue them, await or read them.

Waiting never blocks the event loop: one pub/sub subscription per API process receives
``"<id> <status>"`` for the jobs this process waits on (the worker publishes it when it
writes the result), and resolves an asyncio future. A lost message costs at most a poll
interval: waiters re-read the job's status every ``POLL_FALLBACK_SEC``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from celery import Celery

from api.metrics import note_model
from api.publisher import Publisher
from api.stream_reads import StreamReads
from inferq import protocol as p
from inferq.catalog import Catalog, ModelEntry
from inferq.errors import (
    ServiceError,
    model_not_found,
    model_not_supported,
    no_live_worker,
    server_shutting_down,
)
from inferq.redisconn import (
    async_redis_client,
    broker_transport_options,
    broker_url,
    reuse_kombu_clients,
)
from inferq.settings import Settings, instance_name

log = logging.getLogger(__name__)

POLL_FALLBACK_SEC = 1.0
REDIS_POOL_SIZE = 64
PRESENCE_CACHE_SEC = 1.0


class ClientGone(Exception):
    """The client disconnected while its request waited for a job (the job is cancelled)."""


class JobQueue:
    def __init__(self, settings: Settings, catalog: Catalog, client: aioredis.Redis | None = None):
        self.settings = settings
        self.catalog = catalog
        # A bounded pool that makes a request wait for a free connection under bursts
        # (a plain pool fails with "Too many connections" instead).
        self.redis = client or async_redis_client(
            settings,
            max_connections=REDIS_POOL_SIZE,
            timeout=10,
            socket_connect_timeout=2,
            socket_timeout=10,
        )
        reuse_kombu_clients()
        self.celery = Celery("inferq-api")
        self.celery.conf.update(
            p.celery_config(
                broker_url(settings),
                settings.visibility_timeout_sec,
                task_events=settings.task_events,
                transport_options=broker_transport_options(settings),
            )
        )
        # Messages pushed by this client (Celery's send_task when task-sent events are wanted).
        self.publisher = Publisher(
            self.celery,
            settings.publish_coalesce_max,
            None if settings.task_events else self.redis,
        )
        self.notify_channel = f"{p.PREFIX}:notify:{instance_name('api')}"
        self._cancel = self.redis.register_script(p.CANCEL_SCRIPT)
        self._events = StreamReads(self.redis, blocking=REDIS_POOL_SIZE // 2)
        self._waiters: dict[str, asyncio.Future] = {}
        self._presence: dict[str, tuple[float, int]] = {}
        self._infos: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._listener: asyncio.Task | None = None
        self.stopping_since: float | None = None  # monotonic time of the shutdown signal

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="job-notifications")

    def begin_shutdown(self) -> None:
        """The process was asked to stop (a signal handler calls this): requests still waiting
        for their job after API_SHUTDOWN_GRACE_SEC are answered 503 (see :meth:`wait`)."""
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()

    def shutdown_due(self) -> bool:
        """The shutdown grace is over: waiting requests and open streams end now."""
        since = self.stopping_since
        return (
            since is not None and time.monotonic() - since >= self.settings.api_shutdown_grace_sec
        )

    async def stop(self) -> None:
        if self._listener:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.redis.aclose()

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.notify_channel)
                async for message in pubsub.listen():
                    job_id, status, result = p.parse_notification(message["data"])
                    future = self._waiters.get(job_id)
                    if future is not None and not future.done():
                        future.set_result((status, result))
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                OSError,
            ) as exc:
                log.warning("notification channel lost (%s); reconnecting", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # --- models and workers ------------------------------------------------------------------

    def entry(self, model: str) -> ModelEntry:
        entry = self.catalog.get(model)
        if entry is None:
            raise model_not_found(model)
        return entry

    async def live_workers(self, model: str, *, fresh: bool = False) -> int:
        cached = self._presence.get(model)
        if not fresh and cached and time.monotonic() - cached[0] < PRESENCE_CACHE_SEC and cached[1]:
            return cached[1]
        count = await self.redis.zcount(p.workers_key(model), p.now(), "+inf")
        self._presence[model] = (time.monotonic(), count)
        return count

    async def worker_counts(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        now = p.now()
        for entry in self.catalog:
            pipe.zcount(p.workers_key(entry.name), now, "+inf")
        counts = await pipe.execute()
        return {e.name: c for e, c in zip(self.catalog, counts, strict=True) if c}

    async def model_infos(self, *, cached: bool = False) -> dict[str, dict[str, Any]]:
        """What workers announced about their models (capabilities, dimensions, ...)."""
        at, infos = self._infos
        if cached and infos and time.monotonic() - at < PRESENCE_CACHE_SEC:
            return infos
        raw = await self.redis.hgetall(p.MODEL_INFO_KEY)
        infos = {k.decode(): p.loads(v) for k, v in raw.items()}
        self._infos = (time.monotonic(), infos)
        return infos

    async def require_served(self, model: str, endpoint: p.Endpoint) -> ModelEntry:
        """The entry of a model that has a live worker able to serve ``endpoint``."""
        entry = self.entry(model)
        if not await self.live_workers(entry.name):
            raise no_live_worker(entry.name)
        capability = p.ENDPOINT_CAPABILITY[endpoint]
        info = (await self.model_infos(cached=True)).get(entry.name, {})
        if capability not in info.get("capabilities", [capability]):
            raise model_not_supported(entry.name, endpoint.value)
        return entry

    # --- jobs --------------------------------------------------------------------------------

    async def submit(
        self,
        *,
        endpoint: p.Endpoint,
        entry: ModelEntry,
        request: dict[str, Any],
        kind: p.JobKind,
        owner: str,
        request_id: str,
        metadata: dict[str, Any] | None = None,
        wait: bool = True,
    ) -> str:
        """Store the job, then put its id on the model's queue. Returns the job id.

        A sync job is awaited with :meth:`wait` unless ``wait`` is False (a streamed response
        reads the job's event stream instead)."""
        job_id = p.new_job_id()
        sync = kind is p.JobKind.SYNC
        priority = p.Priority.INTERACTIVE if sync else p.Priority.JOB
        fields = p.new_job_fields(
            job_id=job_id,
            kind=kind,
            endpoint=endpoint,
            model=entry.name,
            owner=owner,
            request=request,
            priority=priority,
            metadata=metadata,
            notify=self.notify_channel if sync else "",
            request_id=request_id,
            ttl=self.settings.result_ttl_sec,
        )
        key = p.job_key(job_id)
        note_model(entry.name)
        task, queue = p.TASK_NAMES[endpoint], p.queue_name(entry.name)
        alone = not sync or endpoint not in p.COALESCED_ENDPOINTS
        # A free lane: the job's message goes in the transaction that creates it.
        own = self.publisher.claim(task, queue, int(priority), alone=alone)
        try:
            pipe = self.redis.pipeline(transaction=True)
            for queued in p.queue_lists(entry.name):
                pipe.llen(queued)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.settings.result_ttl_sec)
            events = p.events_key(job_id)
            pipe.xadd(events, p.event_fields(p.EventType.STATUS, {"status": p.JobStatus.QUEUED}))
            pipe.expire(events, self.settings.result_ttl_sec)
            if not sync:
                index = p.jobs_index_key(owner)
                pipe.zadd(index, {job_id: int(p.now() * 1000)})
                pipe.expire(index, self.settings.result_ttl_sec)
            if own:
                message = self.publisher.message(task, queue, int(priority), job_id, request_id)
                pipe.lpush(*message)
            if sync and wait:  # before the message is out: the job may finish at once
                self._waiters[job_id] = asyncio.get_running_loop().create_future()
            try:
                replies = await pipe.execute()
            except BaseException:
                self._waiters.pop(job_id, None)
                raise
        finally:
            if own:
                self.publisher.release(task, queue, int(priority), alone=alone)
        depth = sum(replies[: len(p.PRIORITY_STEPS)])
        if depth >= self.settings.max_queue_depth:
            self._waiters.pop(job_id, None)
            await self.redis.delete(key, events)
            if own:  # a worker that took it meanwhile finds no job and skips it
                await self.redis.lrem(message[0], 1, message[1])
            if not sync:
                await self.redis.zrem(p.jobs_index_key(owner), job_id)
            raise ServiceError(
                429,
                f"model '{entry.name}' has {depth} queued jobs "
                f"(limit {self.settings.max_queue_depth}); retry later",
                code="rate_limit_exceeded",
                headers={"Retry-After": "2"},
            )
        if not own:
            try:
                await self.publisher.publish(
                    task, queue, int(priority), job_id, request_id, alone=alone
                )
            except BaseException:
                self._waiters.pop(job_id, None)
                await self.redis.delete(key, events)
                raise
        if self.settings.redis_wait_replicas:
            await self._replicate(key)
        return job_id

    async def _replicate(self, key: str) -> None:
        """Wait until REDIS_WAIT_REPLICAS replicas have the job and its queue message, so that
        a failover right after cannot lose an accepted job. WAIT counts this connection's
        writes; the EXPIRE (a no-op rewrite of the TTL) comes after the message was queued,
        and replication is one ordered stream."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(key, self.settings.result_ttl_sec)
        pipe.wait(self.settings.redis_wait_replicas, self.settings.redis_wait_timeout_ms)
        acked = (await pipe.execute())[-1]
        if acked < self.settings.redis_wait_replicas:
            log.warning(
                "job %s accepted with %d of %d replicas acknowledging it",
                key,
                acked,
                self.settings.redis_wait_replicas,
            )

    async def wait(
        self,
        job_id: str,
        timeout: float,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> dict[str, Any]:
        """Block (asynchronously) until the job is terminal; returns its record (only id,
        status and result when a small result came with the notification).

        ``gone`` (the request's ``is_disconnected``) is asked at every wake-up (at least once
        per ``POLL_FALLBACK_SEC``): a client that went away has its job cancelled, and
        :class:`ClientGone` is raised, so nobody's result is computed for nobody."""
        future = self._waiters.get(job_id)
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if self.shutdown_due():
                    await self.cancel(job_id)
                    raise server_shutting_down()
                if remaining <= 0:
                    before = await self.cancel(job_id)
                    raise ServiceError(
                        504,
                        f"the job did not finish within {timeout:.0f}s",
                        code="timeout",
                        final=before == p.JobStatus.RUNNING,  # a retry would run it again
                    )
                if future is not None:
                    if not future.done():  # (asyncio.wait: no shield, no task; fewer loop turns)
                        await asyncio.wait((future,), timeout=min(POLL_FALLBACK_SEC, remaining))
                    if future.done() and future.result()[1] is not None:
                        status, result = future.result()  # the result came with the notification
                        return {
                            p.JobField.ID: job_id.encode(),
                            p.JobField.STATUS: status.encode(),
                            p.JobField.RESULT: result,
                        }
                else:
                    await asyncio.sleep(min(POLL_FALLBACK_SEC, remaining))
                record = await self.read(job_id)
                if record is None:
                    raise ServiceError(500, "the job expired before it finished", code="job_lost")
                if record[p.JobField.STATUS].decode() in p.TERMINAL_STATUSES:
                    return record
                if gone is not None and await gone():
                    await self.cancel(job_id)
                    raise ClientGone()
        finally:
            self._waiters.pop(job_id, None)

    async def read(self, job_id: str) -> dict[str, Any] | None:
        values = await self.redis.hmget(p.job_key(job_id), p.PUBLIC_FIELDS)
        return p.decode_job(p.PUBLIC_FIELDS, values)

    async def get(self, job_id: str, owner: str) -> dict[str, Any] | None:
        """The job ``job_id`` if ``owner`` owns it (a client's id: checked before use)."""
        if not p.names_a_record(job_id):
            return None
        record = await self.read(job_id)
        if record is None or record.get(p.JobField.OWNER, b"").decode() != owner:
            return None
        return record

    async def list(
        self, owner: str, *, limit: int, after: str | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """An owner's jobs, newest first; ``after`` is the last id of the previous page."""
        index = p.jobs_index_key(owner)
        cutoff = int((p.now() - self.settings.result_ttl_sec) * 1000)
        await self.redis.zremrangebyscore(index, "-inf", cutoff)
        start = 0
        if after:
            rank = await self.redis.zrevrank(index, after)
            if rank is None:
                raise ServiceError(
                    400,
                    f"'after' names an unknown job '{after}'",
                    param="after",
                    code="invalid_value",
                )
            start = rank + 1
        ids = await self.redis.zrevrange(index, start, start + limit)
        has_more = len(ids) > limit
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids[:limit]:
            pipe.hmget(p.job_key(job_id.decode()), p.PUBLIC_FIELDS)
        records = [p.decode_job(p.PUBLIC_FIELDS, r) for r in await pipe.execute()]
        return [r for r in records if r], has_more

    async def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the status it had (None if unknown)."""
        before = await self._cancel(
            keys=[p.job_key(job_id), p.events_key(job_id)],
            args=[f"{p.now():.6f}", p.CANCEL_CHANNEL, self.settings.result_ttl_sec],
        )
        return before.decode() if before else None

    async def read_events(
        self, job_id: str, after: str, *, block_ms: int | None, count: int = 1024
    ) -> list[tuple[str, str, bytes]]:
        """Entries of the job's event stream after id ``after`` as ``(id, event, data JSON)``,
        waiting up to ``block_ms`` for the first one (None: not at all); [] when none came."""
        return await self._events.read(p.events_key(job_id), after, block_ms, count)
