"""workers/broker_patches.py against the installed kombu, on a real Redis connection: a channel
whose transport is gone keeps its last pool (an acknowledgement reaches Redis) and skips the
restore, where kombu raised AttributeError and stopped the worker's consumer."""

from __future__ import annotations

from kombu import Connection

from inferq.redisconn import reuse_kombu_clients
from workers.broker_patches import survive_broker_loss


def test_a_channel_outliving_its_transport_still_acks_and_does_not_crash(redis_url, redis_client):
    survive_broker_loss()
    connection = Connection(redis_url)
    channel = connection.channel()
    pool = channel.pool
    redis_client.hset(channel.unacked_key, "tag-1", "[]")
    redis_client.zadd(channel.unacked_index_key, {"tag-1": 1})
    try:
        transport = channel.connection
        transport.client = None  # what kombu leaves after closing the broken connection
        channel._pool = None  # and what _disconnect_pools leaves
        assert channel.pool is pool  # not AttributeError: the last pool, reconnecting on use
        channel.qos.restore_unacked()  # skipped, no AttributeError
        channel.qos.ack("tag-1")  # lands in Redis
        assert not redis_client.hexists(channel.unacked_key, "tag-1")
        assert redis_client.zscore(channel.unacked_index_key, "tag-1") is None
    finally:
        redis_client.delete(channel.unacked_key, channel.unacked_index_key)


def test_kombu_reuses_one_client_per_pool_and_it_works(redis_url, redis_client):
    """inferq.redisconn.reuse_kombu_clients: publishing, recording and acknowledging through
    one client per pool (kombu built a redis.Redis for each call), a new pool a new client."""
    reuse_kombu_clients()
    connection = Connection(redis_url)
    channel = connection.channel()
    try:
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        channel.qos.append(_message(channel), "tag-2")  # kombu's own unacked bookkeeping
        assert redis_client.hexists(channel.unacked_key, "tag-2")
        channel.qos.ack("tag-2")
        assert not redis_client.hexists(channel.unacked_key, "tag-2")
        channel._pool = None  # a reconnect: a new pool gets a client of its own
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool
            assert third.ping()
    finally:
        redis_client.delete(channel.unacked_key, channel.unacked_index_key)
        connection.release()


def _message(channel):
    from kombu.transport.virtual import Message

    payload = {
        "body": "e30=",
        "properties": {
            "delivery_tag": "tag-2",
            "delivery_info": {"exchange": "", "routing_key": "q"},
            "body_encoding": "base64",
        },
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {},
    }
    return Message(payload, channel=channel)
