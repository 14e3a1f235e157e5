"""The one place Redis clients are made: a plain URL, or the master Sentinel names."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from kombu import Connection
from redis.sentinel import SentinelConnectionPool

from inferq.protocol import celery_config
from inferq.redisconn import (
    async_redis_client,
    broker_transport_options,
    broker_url,
    describe,
    redis_client,
    sentinel_addresses,
)
from inferq.settings import Settings

SENTINELS = Settings(
    redis_url="redis://:s3cret@ignored:1/4",
    redis_sentinels="10.0.0.1:26379, sentinel-2:26380",
    redis_master_name="prod",
)


def test_without_sentinels_everything_uses_redis_url(redis_url):
    settings = Settings(redis_url=redis_url)
    assert broker_url(settings) == redis_url and broker_transport_options(settings) == {}
    assert redis_client(settings).ping()


def test_sentinels_name_the_master_for_every_client():
    assert sentinel_addresses(SENTINELS) == [("10.0.0.1", 26379), ("sentinel-2", 26380)]
    # Celery/kombu: one sentinel:// URL per sentinel, the database and password of REDIS_URL
    url = broker_url(SENTINELS)
    assert url == "sentinel://:s3cret@10.0.0.1:26379/4;sentinel://:s3cret@sentinel-2:26380/4"
    options = celery_config(url, 60, transport_options=broker_transport_options(SENTINELS))
    assert options["broker_transport_options"]["master_name"] == "prod"
    assert options["broker_transport_options"]["sep"] == ":"  # ours are kept
    connection = Connection(url, transport_options=options["broker_transport_options"])
    assert connection.transport_cls == "sentinel" and len(connection.alt) == 2
    # redis-py, sync (workers) and asyncio (API): Sentinel-managed pools for master "prod"
    for client in (
        redis_client(SENTINELS),
        async_redis_client(SENTINELS, max_connections=4, timeout=1),
    ):
        pool = client.connection_pool
        assert pool.service_name == "prod" and pool.is_master
        assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["password"] == "s3cret"
    assert isinstance(redis_client(SENTINELS).connection_pool, SentinelConnectionPool)
    api_pool = async_redis_client(SENTINELS, max_connections=4, timeout=1).connection_pool
    assert isinstance(api_pool, aioredis.BlockingConnectionPool)  # bursts wait, not fail
    assert api_pool.max_connections == 4 and api_pool.timeout == 1
    assert "s3cret" not in describe(SENTINELS) and "prod" in describe(SENTINELS)


def test_a_malformed_sentinel_address_is_refused():
    with pytest.raises(ValueError, match="host:port"):
        sentinel_addresses(Settings(redis_sentinels="10.0.0.1"))
