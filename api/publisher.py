"""Publishing job ids to Celery, several interactive jobs of one model per message.

Celery's cost is per message, not per job: the API's publish (a thread hop and a kombu
``LPUSH``), the worker's fetch, its unacked bookkeeping, the pool's dispatch and the ack. So
jobs of one (task, queue, priority) that are submitted while that key's previous message is
being published wait for it and then go out together, at most ``max_jobs`` per message. A job
that finds nothing in flight is published at once: coalescing never adds a delay, it only
uses the time a publish takes anyway. Each job keeps its own record, status, cancel and
result; the message carries only their ids (``inferq.protocol.COALESCED_ENDPOINTS``).

Given the API's asyncio Redis client, a message is built here (``api/task_messages.py``) and
pushed on the event loop; without one (``TASK_EVENTS=1``), ``Celery.send_task`` sends it from
a thread. A job that finds its lane free pushes its own message in the transaction that
creates it (:meth:`Publisher.claim`, :meth:`Publisher.message`, :meth:`Publisher.release`):
one round trip for the record and the message; jobs that come while that transaction is in
flight wait for it, as for any publish, and go out together after it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from celery import Celery

from api.task_messages import TaskMessages


@dataclass
class _Lane:
    """Jobs of one (task, queue, priority) waiting for the message being published."""

    waiting: list[tuple[str, str, asyncio.Future]] = field(default_factory=list)
    drain: asyncio.Task | None = None  # the task sending them (None: no publish in flight)
    claimed: bool = False  # a job's own transaction is pushing its message


class Publisher:
    def __init__(self, celery: Celery, max_jobs: int, client: aioredis.Redis | None = None):
        self.celery = celery
        self.client = client
        self.messages = TaskMessages(celery) if client is not None else None
        self.max_jobs = max(1, max_jobs)
        self._lanes: dict[tuple[str, str, int], _Lane] = {}
        self.sent: dict[str, list[int]] = {}  # queue -> [messages, jobs] (for /metrics)

    async def publish(
        self, task: str, queue: str, priority: int, job_id: str, request_id: str, *, alone: bool
    ) -> None:
        """Put ``job_id`` on ``queue``; returns once its message is in Redis (raises what the
        publish raised). ``alone``: a message of its own (a task that takes one id)."""
        if self._laneless(alone):
            await self._send(task, queue, priority, [job_id], [request_id])
            return
        lane = self._lanes.setdefault((task, queue, priority), _Lane())
        future = asyncio.get_running_loop().create_future()
        lane.waiting.append((job_id, request_id, future))
        if lane.drain is None and not lane.claimed:
            lane.drain = asyncio.create_task(self._drain(task, queue, priority, lane))
        await future

    def claim(self, task: str, queue: str, priority: int, *, alone: bool) -> bool:
        """Whether the caller pushes its job's message itself, now (with :meth:`message`, in
        the transaction that creates the job): messages are pushed on the event loop and no
        publish of the job's lane is in flight. Then :meth:`release` must follow, once the
        transaction is done (the lane's jobs that came meanwhile go out then)."""
        if self.messages is None:
            return False
        if self._laneless(alone):
            return True
        lane = self._lanes.setdefault((task, queue, priority), _Lane())
        if lane.drain is not None or lane.claimed:
            return False
        lane.claimed = True
        return True

    def message(
        self, task: str, queue: str, priority: int, job_id: str, request_id: str
    ) -> tuple[str, bytes]:
        """``(list key, payload)`` of the message of a claimed job (see :meth:`claim`)."""
        self._count(queue, 1)
        return self.messages.encode(task, [job_id], queue, priority, {"request_id": request_id})

    def release(self, task: str, queue: str, priority: int, *, alone: bool) -> None:
        if self._laneless(alone):
            return
        lane = self._lanes[(task, queue, priority)]
        lane.claimed = False
        if lane.waiting and lane.drain is None:
            lane.drain = asyncio.create_task(self._drain(task, queue, priority, lane))

    def _laneless(self, alone: bool) -> bool:
        """Whether a job goes out in a message of its own, outside any coalescing lane."""
        return alone or self.max_jobs == 1

    def _count(self, queue: str, jobs: int) -> None:
        counts = self.sent.setdefault(queue, [0, 0])
        counts[0] += 1
        counts[1] += jobs

    async def _drain(self, task: str, queue: str, priority: int, lane: _Lane) -> None:
        """Send what waits, in messages of up to ``max_jobs``, until nothing does."""
        try:
            while lane.waiting:
                group, lane.waiting = lane.waiting[: self.max_jobs], lane.waiting[self.max_jobs :]
                try:
                    await self._send(
                        task, queue, priority, [g[0] for g in group], [g[1] for g in group]
                    )
                except Exception as exc:  # each waiter raises it (its job is then removed)
                    _settle(group, exc)
                except BaseException:  # the drain was cancelled (the API stops)
                    _settle(group, RuntimeError("publish interrupted"))
                    raise
                else:
                    _settle(group, None)
        finally:
            lane.drain = None
            _settle(lane.waiting, RuntimeError("publish interrupted"))  # left by a cancel
            lane.waiting = []

    async def _send(
        self, task: str, queue: str, priority: int, job_ids: list[str], request_ids: list[str]
    ) -> None:
        self._count(queue, len(job_ids))
        headers = {"request_id": ",".join(request_ids)}
        if self.messages is not None:
            key, payload = self.messages.encode(task, job_ids, queue, priority, headers)
            await self.client.lpush(key, payload)
            return
        await asyncio.to_thread(
            self.celery.send_task,
            task,
            args=job_ids,
            queue=queue,
            priority=priority,
            headers=headers,
            retry=False,
        )


def _settle(group: list[tuple[str, str, asyncio.Future]], error: Exception | None) -> None:
    for _, _, future in group:
        if future.done():  # its request was cancelled meanwhile
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
