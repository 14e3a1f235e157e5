"""Every Redis connection inferq makes comes from here: one server named by ``REDIS_URL``, or,
with ``REDIS_SENTINELS`` set, the master of ``REDIS_MASTER_NAME`` as Redis Sentinel names it.

With Sentinel, each new connection asks the sentinels for the current master, and a pool drops
its idle connections when the master changes, so clients follow a failover by themselves. The
database, user and password still come from ``REDIS_URL`` (its host and port are then unused).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

from inferq.settings import Settings

SENTINEL_TIMEOUT_SEC = 1.0  # one sentinel that does not answer is skipped after this


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """``REDIS_SENTINELS`` as (host, port) pairs; [] when Sentinel is not used."""
    addresses = []
    for item in settings.redis_sentinels:
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"REDIS_SENTINELS entry {item!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def _url_auth(settings: Settings) -> dict[str, Any]:
    """The database and credentials of ``REDIS_URL`` (what a Sentinel master needs too)."""
    params = parse_url(settings.redis_url)
    return {k: params[k] for k in ("db", "username", "password") if params.get(k) is not None}


def _retry_count(window_sec: float) -> int:
    """Retries of an exponential backoff (0.1 s doubling, at most 1 s) spanning ``window_sec``."""
    waited, retries = 0.0, 0
    while waited < window_sec:
        waited += min(1.0, 0.1 * 2**retries)
        retries += 1
    return retries


def redis_client(
    settings: Settings, *, retry_window_sec: float = 0.0, **kwargs: Any
) -> redis.Redis:
    """A synchronous client (workers). ``retry_window_sec``: how long a command keeps retrying
    on connection errors (each retry reconnects, to the new master after a failover)."""
    backoff = ExponentialBackoff(cap=1.0, base=0.1)
    kwargs.setdefault("retry", Retry(backoff, _retry_count(retry_window_sec)))
    sentinels = sentinel_addresses(settings)
    if not sentinels:
        return redis.Redis.from_url(settings.redis_url, **kwargs)
    manager = Sentinel(
        sentinels,
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT_SEC,
            "socket_connect_timeout": SENTINEL_TIMEOUT_SEC,
        },
    )
    return manager.master_for(settings.redis_master_name, **_url_auth(settings), **kwargs)


class _BlockingSentinelPool(AsyncSentinelPool, aioredis.BlockingConnectionPool):
    """A Sentinel-managed pool that makes a caller wait for a free connection, as the API's
    plain pool does (a plain pool fails with "Too many connections" under bursts)."""


def async_redis_client(
    settings: Settings, *, max_connections: int, timeout: float, **kwargs: Any
) -> aioredis.Redis:
    """The API's client: a bounded pool whose callers wait up to ``timeout`` for a connection.
    One immediate retry, so that a pooled connection to a master that is gone costs a
    reconnect rather than an error; a Redis that is really down fails fast (503)."""
    kwargs.setdefault("retry", AsyncRetry(NoBackoff(), 1))
    sentinels = sentinel_addresses(settings)
    if not sentinels:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=max_connections, timeout=timeout, **kwargs
        )
        return aioredis.Redis(connection_pool=pool)
    manager = AsyncSentinel(
        sentinels,
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT_SEC,
            "socket_connect_timeout": SENTINEL_TIMEOUT_SEC,
        },
    )
    return manager.master_for(
        settings.redis_master_name,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections,
        timeout=timeout,
        **_url_auth(settings),
        **kwargs,
    )


def broker_url(settings: Settings) -> str:
    """Celery's broker URL: ``REDIS_URL``, or one ``sentinel://`` URL per sentinel (kombu's
    Sentinel transport; the master's name is in :func:`broker_transport_options`)."""
    sentinels = sentinel_addresses(settings)
    if not sentinels:
        return settings.redis_url
    auth = _url_auth(settings)
    user = ""
    if auth.get("password"):
        user = f"{quote(auth.get('username') or '', safe='')}:{quote(auth['password'], safe='')}@"
    db = auth.get("db", 0)
    return ";".join(
        f"sentinel://{user}{f'[{h}]' if ':' in h else h}:{port}/{db}" for h, port in sentinels
    )


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """What kombu's Sentinel transport needs beyond the URL (nothing for a plain Redis)."""
    if not settings.redis_sentinels:
        return {}
    return {
        "master_name": settings.redis_master_name,
        "sentinel_kwargs": {
            "socket_timeout": SENTINEL_TIMEOUT_SEC,
            "socket_connect_timeout": SENTINEL_TIMEOUT_SEC,
        },
    }


def describe(settings: Settings) -> str:
    """Where Redis is, for logs (no password)."""
    if settings.redis_sentinels:
        via = ",".join(settings.redis_sentinels)
        return f"Sentinel master '{settings.redis_master_name}' via {via}"
    params = parse_url(settings.redis_url)
    return f"{params.get('host', 'localhost')}:{params.get('port', 6379)}/{params.get('db', 0)}"


def reuse_kombu_clients() -> None:
    """Make kombu's Redis transport reuse one client per connection pool for its synchronous
    calls (publishing a task, recording and acknowledging a delivery) instead of building a
    new ``redis.Redis`` for each: that construction (~100 us, its response-callback tables)
    cost more than the round trip it served, three times per job in a worker and once per
    publish in the API. A client over a pool is thread-safe; a new pool (after a reconnect)
    gets a new client. Idempotent; a monkeypatch of kombu 5.x's ``Channel._create_client``
    (tests/test_broker_patches.py checks it against the installed kombu)."""
    from kombu.transport import redis as kombu_redis

    if getattr(kombu_redis.Channel, "_inferq_reuses_clients", False):
        return
    original = kombu_redis.Channel._create_client

    def _create_client(self, asynchronous=False):
        if asynchronous:
            return original(self, asynchronous)
        pool = self.pool
        cached = self.__dict__.get("_inferq_client")
        if cached is None or cached[0] is not pool:
            cached = (pool, original(self, False))
            self.__dict__["_inferq_client"] = cached
        return cached[1]

    kombu_redis.Channel._create_client = _create_client
    kombu_redis.Channel._inferq_reuses_clients = True
