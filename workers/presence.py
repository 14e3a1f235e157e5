"""Background threads of a worker: announcing its models, and hearing cancel requests."""

from __future__ import annotations

import logging
import threading

import redis

from inferq import protocol as p
from inferq.settings import Settings

log = logging.getLogger(__name__)


class Heartbeat:
    """Keeps this worker in ``inferq:workers:<model>`` (scored by expiry) while it runs."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        worker: str,
        infos: dict[str, dict],
        on_beat=None,
    ):
        self.redis = client
        self.settings = settings
        self.on_beat = on_beat  # also run every interval (renewing job leases)
        self.worker = worker
        self.infos = infos
        self._stop = threading.Event()
        self._left = threading.Event()  # out of the presence sets (shutting down)
        # Orders a beat's ZADD against stop()'s ZREM: a beat in flight when the worker stops
        # would otherwise put it back in the pool after it left.
        self._presence_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        if self.infos:
            self.redis.hset(
                p.MODEL_INFO_KEY, mapping={m: p.dumps(i) for m, i in self.infos.items()}
            )
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        with self._presence_lock:
            if not self._left.is_set():
                self._announce()
        if self.on_beat is not None:
            self.on_beat()

    def _announce(self) -> None:
        now = p.now()
        pipe = self.redis.pipeline(transaction=False)
        for model in self.infos:
            key = p.workers_key(model)
            pipe.zadd(key, {self.worker: now + self.settings.heartbeat_ttl_sec})
            pipe.zremrangebyscore(key, "-inf", now)
        pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_sec):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        """Leave the pool at once, so the API stops routing new requests here. The beats go
        on without announcing (``on_beat`` renews the leases of the jobs being finished) until
        the process exits."""
        with self._presence_lock:
            self._left.set()
            try:
                pipe = self.redis.pipeline(transaction=False)
                for model in self.infos:
                    pipe.zrem(p.workers_key(model), self.worker)
                pipe.execute()
            except redis.RedisError as exc:
                log.warning("could not deregister: %s", exc)


class CancelListener:
    """Sets the cancel event of running jobs named on the cancel channel."""

    def __init__(self, client: redis.Redis, on_cancel):
        self.redis = client
        self.on_cancel = on_cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cancel-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(p.CANCEL_CHANNEL)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        self.on_cancel(message["data"].decode())
            except redis.RedisError as exc:
                log.warning("cancel listener lost Redis (%s); reconnecting", exc)
                self._stop.wait(1.0)
