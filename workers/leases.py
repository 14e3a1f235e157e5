"""Job leases: the broker messages a worker holds, renewed while it lives, handed back soon
after it dies.

kombu's Redis transport keeps every delivered, unacknowledged message in the hash ``unacked``
(delivery tag -> message) and the sorted set ``unacked_index`` (tag -> delivery time), and
puts a message back on its queue once it is older than the visibility timeout. Every
heartbeat a worker

* **renews** the delivery time of each message it holds (running, or waiting for a thread),
  so a long job on a live worker is never taken over, and records which tags it holds under
  its name (``LEASES_KEY``, its expiry in ``LEASE_HOLDERS_KEY``: ``HEARTBEAT_TTL_SEC`` ahead);
* **reaps** the holders whose expiry passed (a worker killed, OOM, its machine gone): one
  worker wins a short claim per dead holder and restores that holder's messages to the front
  of their queues with kombu's own ``restore_by_tag`` (a WATCH transaction on ``unacked``: a
  message already acknowledged or restored is not restored again). So a dead worker's jobs
  run elsewhere within about ``HEARTBEAT_TTL_SEC`` + one heartbeat, not after the visibility
  timeout (which stays as the fallback, e.g. for a message taken less than a heartbeat
  before the crash). A job run twice is harmless: ``START`` lets a ``running`` job start again
  and ``FINISH`` writes one result.

A worker shutting down warmly leaves the presence sets at once but keeps renewing its leases
until it exits, so the jobs it is finishing are not handed to others.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery

from inferq import protocol as p
from inferq.settings import Settings

log = logging.getLogger(__name__)

LEASES_KEY = f"{p.PREFIX}:leases"  # hash: worker -> JSON list of the delivery tags it holds
LEASE_HOLDERS_KEY = f"{p.PREFIX}:lease-holders"  # zset: worker -> when its leases lapse
REAP_CLAIM_SEC = 60  # one reaper per dead holder; a reaper that dies is replaced after this


def reap_claim_key(worker: str) -> str:
    return f"{p.PREFIX}:reaping:{worker}"


class Leases:
    """One worker's leases (see the module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings, app: Celery, worker: str):
        self.redis = client
        self.settings = settings
        self.app = app
        self.worker = worker

    def held_tags(self) -> list[str]:
        from celery.worker import state

        held = [*state.active_requests, *state.reserved_requests]
        return [r.message.delivery_tag for r in held if getattr(r, "message", None)]

    def renew(self) -> None:
        """Mark the deliveries this worker holds as fresh and record them under its name."""
        tags = self.held_tags()
        now = p.now()
        pipe = self.redis.pipeline(transaction=False)
        if tags:
            pipe.zadd(p.UNACKED_INDEX_KEY, dict.fromkeys(tags, now), xx=True)
            pipe.hset(LEASES_KEY, self.worker, p.dumps(tags))
            pipe.zadd(LEASE_HOLDERS_KEY, {self.worker: now + self.settings.heartbeat_ttl_sec})
        else:
            pipe.hdel(LEASES_KEY, self.worker)
            pipe.zrem(LEASE_HOLDERS_KEY, self.worker)
        pipe.execute()

    def reap(self) -> int:
        """Restore the messages of holders whose leases lapsed; returns how many."""
        dead = self.redis.zrangebyscore(LEASE_HOLDERS_KEY, "-inf", p.now())
        restored = 0
        for raw in dead:
            holder = raw.decode()
            if holder == self.worker:
                continue
            if not self.redis.set(reap_claim_key(holder), self.worker, nx=True, ex=REAP_CLAIM_SEC):
                continue  # another worker is on it
            tags = p.loads(self.redis.hget(LEASES_KEY, holder) or b"[]")
            count = self._restore(tags)
            restored += count
            pipe = self.redis.pipeline(transaction=True)
            pipe.hdel(LEASES_KEY, holder)
            pipe.zrem(LEASE_HOLDERS_KEY, holder)
            pipe.execute()
            if count:
                log.warning(
                    "worker %s stopped renewing its leases: %d deliveries requeued", holder, count
                )
        return restored

    def _restore(self, tags: list[str]) -> int:
        if not tags:
            return 0
        present = self.redis.hmget(p.UNACKED_KEY, tags)
        waiting = [tag for tag, message in zip(tags, present, strict=True) if message]
        if not waiting:
            return 0
        with self.app.connection_for_write() as connection:
            qos = connection.default_channel.qos
            for tag in waiting:
                qos.restore_by_tag(tag)
        return len(waiting)
