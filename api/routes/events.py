"""``GET /v1/jobs/{id}/events``: a job's event stream as Server-Sent Events.

Every job has one (a Redis Stream, see :func:`inferq.protocol.events_key`): ``status``
events for each state change, ``progress`` events (embedding and audio jobs), and for chat
jobs the generated text as ``delta`` events (``chunk`` for upstream proxy models). Each SSE
event's ``id`` is the stream entry id, so a client that reconnects with ``Last-Event-ID`` (or
``?after=``) gets exactly the events it missed. The response ends after the terminal status.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse

from api.deps import OwnerDep, QueueDep
from api.responses import job_not_found
from api.sse import job_events_response
from inferq.errors import bad_request

router = APIRouter(tags=["jobs"])

# A Redis stream entry id: one or two unsigned 64-bit integers in ASCII digits.
_ENTRY_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")


def is_entry_id(cursor: str) -> bool:
    match = _ENTRY_ID.fullmatch(cursor)
    return bool(match) and all(int(part) < 2**64 for part in match.groups() if part)


@router.get("/jobs/{job_id}/events", summary="Stream a job's events (SSE)")
async def job_events(
    job_id: str,
    queue: QueueDep,
    owner: OwnerDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[str | None, Query(description="resume after this event id")] = None,
) -> EventSourceResponse:
    if await queue.get(job_id, owner) is None:
        raise job_not_found(job_id)
    cursor = (last_event_id or after or "0-0").strip()
    if not is_entry_id(cursor):
        raise bad_request(
            f"'{cursor}' is not an event id (Last-Event-ID / after)", param="Last-Event-ID"
        )
    return job_events_response(queue, job_id, cursor)
