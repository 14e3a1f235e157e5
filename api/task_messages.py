"""Celery task messages, built and pushed by the API's own asyncio Redis client.

The workers consume with Celery, unchanged; the API only sends, and sending through
``Celery.send_task`` cost a thread hop (kombu's client is synchronous) and ~0.2-0.3 ms of
Celery and kombu Python per message (routing, signals, ``as_task_v2``, the producer, the
envelope) around one ``LPUSH``. A message of ours is what ``send_task`` writes for the API's
tasks (Celery's protocol 2 in kombu's Redis envelope: ``tests/test_task_messages.py``
compares the two field by field against the installed Celery), pushed on the event loop.
With ``TASK_EVENTS=1`` the API still publishes through Celery, which also sends ``task-sent``.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from collections.abc import Sequence

import orjson
from celery import Celery

from inferq import protocol as p

# Celery's embedded-options part of a protocol 2 body (no callbacks, chains or chords).
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def list_key(queue: str, priority: int) -> str:
    """The Redis list kombu's Redis transport keeps ``priority``'s messages of ``queue`` in
    (``priority_steps`` and ``sep`` of ``inferq.protocol.celery_config``)."""
    if priority not in p.PRIORITY_STEPS:
        raise ValueError(f"priority {priority} is not one of {p.PRIORITY_STEPS}")
    return f"{queue}:{priority}" if priority else queue


class TaskMessages:
    def __init__(self, app: Celery):
        self.origin = f"gen{os.getpid()}@{socket.gethostname()}"  # Celery's anon_nodename
        self.reply_to = str(app.thread_oid)  # no results are sent back (task_ignore_result)

    def encode(
        self,
        task: str,
        args: Sequence[str],
        queue: str,
        priority: int,
        headers: dict[str, str],
    ) -> tuple[str, bytes]:
        """``(list key, payload)`` of one message of ``task(*args)`` for ``queue``."""
        task_id = str(uuid.uuid4())
        body = orjson.dumps([list(args), {}, _EMBED])
        message = {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr(list(args)),
                "kwargsrepr": "{}",
                "origin": self.origin,
                "ignore_result": None,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
                **headers,
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": self.reply_to,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": priority,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return list_key(queue, priority), orjson.dumps(message)
