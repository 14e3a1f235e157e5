"""``GET /v1/jobs/{id}/events``: a job's event stream as Server-Sent Events.

Every job has one (a Redis Stream, see :func:`inferq.protocol.events_key`): ``status``
events for each state change, ``progress`` events (embedding jobs), and for chat jobs the
generated text as ``delta`` events (``chunk`` for upstream proxy models). Each SSE event's
``id`` is the stream entry id, so a client that reconnects with ``Last-Event-ID`` (or
``?after=``) gets exactly the events it missed. The response ends after the terminal status.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse

from api.deps import OwnerDep, QueueDep
from api.queue import JobQueue
from inferq import protocol as p
from inferq.errors import bad_request

router = APIRouter(tags=["jobs"])

BLOCK_MS = 1000  # one XREAD waits at most this long before the job's status is re-checked
PING_SEC = 15
_ENTRY_ID = re.compile(r"^\d+(-\d+)?$")


def is_terminal_status(event: str, data: bytes) -> str | None:
    """The terminal status a stream entry announces, else None."""
    if event != p.EventType.STATUS:
        return None
    status = p.loads(data).get("status")
    return status if status in p.TERMINAL_STATUSES else None


async def follow(
    queue: JobQueue, job_id: str, after: str = "0-0"
) -> AsyncIterator[tuple[str, str, bytes]]:
    """The job's stream entries after ``after``, as they come, up to its terminal status.

    If the stream has no entry for a while, the job is re-read: a job that is gone or already
    terminal (its terminal entry read before ``after``) ends the iteration."""
    cursor = after
    while True:
        entries = await queue.read_events(job_id, cursor, block_ms=BLOCK_MS)
        if not entries:
            record = await queue.read(job_id)
            status = record[p.JobField.STATUS].decode() if record else None
            if status in p.TERMINAL_STATUSES or record is None:
                # One last look: the terminal entry may have landed after the read.
                entries = await queue.read_events(job_id, cursor, block_ms=None)
                if not entries:
                    return
        for entry_id, event, data in entries:
            cursor = entry_id
            yield entry_id, event, data
            if is_terminal_status(event, data):
                return


async def _job_events(queue: JobQueue, job_id: str, after: str) -> AsyncIterator[dict[str, Any]]:
    async for entry_id, event, data in follow(queue, job_id, after):
        yield {"id": entry_id, "event": event, "data": data.decode()}


@router.get("/jobs/{job_id}/events", summary="Stream a job's events (SSE)")
async def job_events(
    job_id: str,
    queue: QueueDep,
    owner: OwnerDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[str | None, Query(description="resume after this event id")] = None,
) -> EventSourceResponse:
    if await queue.get(job_id, owner) is None:
        from api.routes.jobs import job_not_found

        raise job_not_found(job_id)
    cursor = (last_event_id or after or "0-0").strip()
    if not _ENTRY_ID.match(cursor):
        raise bad_request(
            f"'{cursor}' is not an event id (Last-Event-ID / after)", param="Last-Event-ID"
        )
    return EventSourceResponse(
        _job_events(queue, job_id, cursor), ping=PING_SEC, sep="\n", headers={"X-Job-ID": job_id}
    )
