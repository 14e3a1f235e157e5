"""Workarounds for kombu's Redis transport losing its broker connection (a Redis restart, a
Sentinel failover), which otherwise stop the worker's consumer with "Unrecoverable error".

When the connection breaks, Celery releases it and reconnects; the old channel is closed
after its transport, whose ``client`` is then None. Two things still use that channel:

- its close restores the unacknowledged messages it delivered, through a pool rebuilt from
  the transport's client: AttributeError. Nothing can be restored through a dead connection
  anyway, and the jobs are still running in this worker, so the restore is skipped: the
  messages stay unacknowledged in Redis (redelivered after the visibility timeout should
  this worker die too);
- the jobs this worker still runs acknowledge their messages on it when they finish (again a
  rebuilt pool: AttributeError, raised in the consumer's event loop). The channel keeps its
  last pool instead, which reconnects on use (to the new master, for a Sentinel pool), so the
  acknowledgement lands and the job is not redelivered.

Both are plain monkeypatches of kombu 5.x internals, applied once; workers/watchdog.py still
restarts a worker whose consumer stops for any other reason.
"""

from __future__ import annotations

import logging

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


def _transport_closed(channel) -> bool:
    return getattr(getattr(channel, "connection", None), "client", None) is None


def _skip_restore_when_closed(original):
    def restore_unacked(self, client=None):
        if client is None and _transport_closed(self.channel):
            log.warning(
                "broker connection lost: %d unacknowledged messages stay in Redis",
                len(self._delivered),
            )
            self._delivered.clear()  # as a restore does: restore_unacked_once runs once
            return None
        return original(self, client)

    return restore_unacked


def _keep_last_pool(original):
    def _get_pool(self, asynchronous=False):
        slot = "_inferq_async_pool" if asynchronous else "_inferq_pool"
        if _transport_closed(self):
            last = self.__dict__.get(slot)
            if last is None:
                raise redis.ConnectionError("the broker connection is closed")
            return last
        pool = original(self, asynchronous)
        self.__dict__[slot] = pool
        return pool

    return _get_pool


def survive_broker_loss() -> None:
    """Apply the patches (idempotent)."""
    if getattr(kombu_redis.QoS, "_inferq_patched", False):
        return
    kombu_redis.QoS.restore_unacked = _skip_restore_when_closed(kombu_redis.QoS.restore_unacked)
    for cls in (kombu_redis.Channel, kombu_redis.SentinelChannel):
        if "_get_pool" in cls.__dict__:
            cls._get_pool = _keep_last_pool(cls.__dict__["_get_pool"])
    kombu_redis.QoS._inferq_patched = True
