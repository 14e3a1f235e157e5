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
  of their queues as kombu's ``restore_by_tag`` does, in a WATCH transaction that restores
  a message only if it is still unacknowledged and was last renewed by the dead holder (a
  delivery tag survives redelivery: a message already restored and taken by a live worker,
  or acknowledged, stays where it is). So a dead worker's jobs
  run elsewhere within about ``HEARTBEAT_TTL_SEC`` + one heartbeat, not after the visibility
  timeout (which stays as the fallback, e.g. for a message taken less than a heartbeat
  before the crash). A job run twice is harmless: ``START`` lets a ``running`` job start again
  and ``FINISH`` writes one result.

A message is also recorded as soon as it is received (``task_received`` -> :meth:`received`), so
a worker killed right after taking a job, before its next heartbeat, still has it handed on.
Receipts are written by a thread of their own, all those that arrived since its last write in
one renewal (at most ``RECEIPT_DELAY_SEC`` after the first): under 32 clients the consumer's
main loop used to renew once per message (the whole held list each time, ~0.4 ms of the worker's
GIL per request). A worker shutting down warmly leaves the presence sets at once but keeps
renewing its leases until it exits, so the jobs it is finishing are not handed to others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import redis
from celery import Celery

from inferq import protocol as p
from inferq.settings import Settings

log = logging.getLogger(__name__)

LEASES_KEY = f"{p.PREFIX}:leases"  # hash: worker -> JSON list of the delivery tags it holds
LEASE_HOLDERS_KEY = f"{p.PREFIX}:lease-holders"  # zset: worker -> when its leases lapse
REAP_CLAIM_SEC = 60  # one reaper per dead holder; a reaper that dies is replaced after this
# Receipts are written at most this late (a small fraction of a heartbeat), so that the
# deliveries of a burst share one renewal.
RECEIPT_DELAY_SEC = 0.2


def reap_claim_key(worker: str) -> str:
    return f"{p.PREFIX}:reaping:{worker}"


class Leases:
    """One worker's leases (see the module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings, app: Celery, worker: str):
        self.redis = client
        self.settings = settings
        self.app = app
        self.worker = worker
        self._received: set[str] = set()
        self._received_lock = threading.Lock()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None

    def received(self, tag: str) -> None:
        """Record a new delivery soon (the lease writer thread coalesces bursts)."""
        with self._received_lock:
            self._received.add(tag)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_received, name="lease-writer", daemon=True
                )
                self._writer.start()
        self._wake.set()

    def _write_received(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(RECEIPT_DELAY_SEC)
            self._wake.clear()
            with self._received_lock:
                tags, self._received = self._received, set()
            try:
                self.renew(extra=tags)
            except redis.RedisError as exc:  # the next heartbeat records them
                log.warning("could not record a lease: %s", exc)

    def held_tags(self) -> list[str]:
        from celery.worker import state

        held = [*state.active_requests, *state.reserved_requests]  # a running one is in both
        return sorted({r.message.delivery_tag for r in held if getattr(r, "message", None)})

    def renew(self, extra: Iterable[str] = ()) -> None:
        """Mark the deliveries this worker holds (and ``extra``, just received) as fresh and
        record them under its name."""
        tags = self.held_tags()
        tags += sorted(set(extra) - set(tags))
        now = p.now()
        pipe = self.redis.pipeline(transaction=False)
        if tags:
            pipe.zadd(p.UNACKED_INDEX_KEY, dict.fromkeys(tags, now), xx=True)
            pipe.hset(LEASES_KEY, self.worker, p.dumps({"at": now, "tags": tags}))
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
            lease = p.loads(self.redis.hget(LEASES_KEY, holder) or b"{}")
            count = self._restore(lease.get("tags", []), lease.get("at", 0.0))
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

    def _restore(self, tags: list[str], renewed_at: float) -> int:
        """Put back each message still held as the dead holder left it: in ``unacked`` and
        last renewed by it (a delivery tag survives a redelivery, so a message already
        restored and taken by a live worker has a newer time and stays where it is)."""
        if not tags:
            return 0
        restored = 0
        with self.app.connection_for_write() as connection:
            channel = connection.default_channel  # kombu's routing of a message to its list

            for tag in tags:

                def restore(pipe, tag=tag) -> bool:
                    payload = pipe.hget(p.UNACKED_KEY, tag)
                    delivered = pipe.zscore(p.UNACKED_INDEX_KEY, tag)
                    if payload is None or delivered is None or delivered > renewed_at:
                        return False
                    message, exchange, routing_key = p.loads(payload)
                    pipe.multi()
                    pipe.zrem(p.UNACKED_INDEX_KEY, tag)
                    pipe.hdel(p.UNACKED_KEY, tag)
                    channel._do_restore_message(message, exchange, routing_key, pipe)
                    return True

                if self.redis.transaction(
                    restore, p.UNACKED_KEY, p.UNACKED_INDEX_KEY, value_from_callable=True
                ):
                    restored += 1
        return restored
