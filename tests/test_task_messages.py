"""The API's Celery messages (api/task_messages.py) are what ``Celery.send_task`` writes."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
import redis.asyncio as aioredis
from celery import Celery

from api.publisher import Publisher
from api.task_messages import TaskMessages, list_key
from inferq import protocol as p

RANDOM = {"id", "root_id", "correlation_id", "delivery_tag", "origin", "reply_to"}


def _celery(redis_url: str) -> Celery:
    app = Celery("task-messages-test")
    app.conf.update(p.celery_config(redis_url, 300, task_events=False))
    return app


def _normalised(payload: bytes) -> dict:
    """A stored message with its per-message random ids left out and its body decoded."""
    message = json.loads(payload)
    for part in (message["headers"], message["properties"]):
        for name in RANDOM & part.keys():
            assert part[name]
            part[name] = "*"
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


@pytest.mark.parametrize("priority", p.PRIORITY_STEPS)
def test_message_equals_celerys(redis_client, redis_url, priority):
    queue = f"{p.PREFIX}.model.task-messages-test"
    lists = [queue if step == 0 else f"{queue}:{step}" for step in p.PRIORITY_STEPS]
    redis_client.delete(*lists)
    app = _celery(redis_url)
    args, headers = ["job-a", "job-b"], {"request_id": "req-a,req-b"}
    task = p.TASK_NAMES[p.Endpoint.EMBEDDINGS]
    app.send_task(task, args=args, queue=queue, priority=priority, headers=headers, retry=False)
    key = list_key(queue, priority)
    assert [k for k in lists if redis_client.llen(k)] == [key]  # the list Celery chose
    celerys = redis_client.rpop(key)

    ours_key, ours = TaskMessages(app).encode(task, args, queue, priority, headers)
    assert ours_key == key
    ours_message = json.loads(ours)
    assert ours_message["headers"]["id"] == ours_message["headers"]["root_id"]
    assert ours_message["headers"]["id"] == ours_message["properties"]["correlation_id"]
    assert _normalised(ours) == _normalised(celerys)


def test_publisher_pushes_its_messages(redis_client, redis_url):
    """Through the asyncio client: jobs submitted together go out in one message, a later
    one in its own."""
    queue = f"{p.PREFIX}.model.task-messages-push"
    redis_client.delete(queue)
    task = p.TASK_NAMES[p.Endpoint.RERANK]

    async def publish() -> None:
        client = aioredis.Redis.from_url(redis_url)
        publisher = Publisher(_celery(redis_url), 8, client)
        await asyncio.gather(
            *(
                publisher.publish(task, queue, 0, f"job-{i}", f"req-{i}", alone=False)
                for i in (1, 2, 3)
            )
        )
        await publisher.publish(task, queue, 0, "job-4", "req-4", alone=False)
        await client.aclose()

    asyncio.run(publish())
    bodies = [_normalised(m) for m in reversed(redis_client.lrange(queue, 0, -1))]
    args = [b["body"][0] for b in bodies]
    assert args == [["job-1", "job-2", "job-3"], ["job-4"]]
    assert [b["headers"]["request_id"] for b in bodies] == ["req-1,req-2,req-3", "req-4"]
    assert {b["headers"]["task"] for b in bodies} == {task}
    redis_client.delete(queue)


def test_a_claimed_lane_holds_later_jobs_until_released(redis_client, redis_url):
    """A job pushing its own message (in its creating transaction) holds its lane: jobs that
    come meanwhile wait, then go out together when it releases the lane."""
    queue = f"{p.PREFIX}.model.task-messages-claim"
    redis_client.delete(queue)
    task = p.TASK_NAMES[p.Endpoint.EMBEDDINGS]

    async def publish() -> None:
        client = aioredis.Redis.from_url(redis_url)
        publisher = Publisher(_celery(redis_url), 8, client)
        assert publisher.claim(task, queue, 0, alone=False)
        assert not publisher.claim(task, queue, 0, alone=False)  # the lane is held
        assert publisher.claim(task, queue, 0, alone=True)  # a message of its own: no lane
        await client.lpush(*publisher.message(task, queue, 0, "job-1", "req-1"))
        later = [
            asyncio.create_task(
                publisher.publish(task, queue, 0, f"job-{i}", f"req-{i}", alone=False)
            )
            for i in (2, 3)
        ]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in later) and redis_client.llen(queue) == 1
        publisher.release(task, queue, 0, alone=False)
        await asyncio.gather(*later)
        assert publisher.sent[queue] == [2, 3]
        assert publisher.claim(task, queue, 0, alone=False)  # free again
        await client.aclose()

    asyncio.run(publish())
    bodies = [_normalised(m) for m in reversed(redis_client.lrange(queue, 0, -1))]
    assert [b["body"][0] for b in bodies] == [["job-1"], ["job-2", "job-3"]]
    redis_client.delete(queue)
