"""workers/broker_patches.py against the installed kombu, on a real Redis connection: a channel
whose transport is gone keeps its last pool (an acknowledgement reaches Redis) and skips the
restore, where kombu raised AttributeError and stopped the worker's consumer."""

from __future__ import annotations

from kombu import Connection

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
