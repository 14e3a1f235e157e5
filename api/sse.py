"""A job's event stream (Redis) relayed as Server-Sent Events.

Used by the streamed sync routes (chat, audio) and by ``GET /v1/jobs/{id}/events``. A streamed
route waits until the output starts (:func:`until_output`), so a request the worker rejects
still gets a plain HTTP error; then :func:`relay` turns each output entry into an SSE event
with the family's :class:`StreamFormat`, and the terminal status into its closing events (or an
error event). A job redelivered after its worker died resumes its output where the stream
left it (``workers.events.Resume``); should the retry write something else, its ``restart``
entry ends the relayed stream with a ``stream_restarted`` error (what was sent cannot be taken
back), while ``/events`` readers get the entry itself and start their text over. A lost
Redis ends a stream with a ``broker_unavailable`` error event, an API that is stopping with a
``server_shutting_down`` one once ``API_SHUTDOWN_GRACE_SEC`` is over. A slow client loses nothing
(the stream is kept with the job); output events carry their stream entry id on
``GET /v1/jobs/{id}/events``, where ``Last-Event-ID`` resumes them. The OpenAI-compatible
streamed routes send no ``id:`` lines, as OpenAI does: the official Python client's SSE decoder
keeps the last id and turns every later keep-alive comment into an event with empty data, which
it fails to parse (any stream longer than ``PING_SEC`` broke). A client that disconnects
cancels the job.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

import anyio
import orjson
import redis.exceptions
from fastapi import Request, Response
from sse_starlette import EventSourceResponse

from api.queue import ClientGone, JobQueue
from api.responses import job_error, sync_response
from inferq import protocol as p
from inferq.errors import ServiceError, broker_unavailable, server_shutting_down

BLOCK_MS = 1000  # one XREAD waits at most this long before the job's status is re-checked
PING_SEC = 15
# Redis lost under a stream: reads are retried this long (a restart, a failover) before the
# stream ends with an error event; a stream never just stops without an ending.
RECONNECT_SEC = 5.0
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

Entry = tuple[str, str, bytes]  # (stream entry id, event type, data JSON)
Event = dict[str, str]  # one SSE event for sse_starlette: data, and id where it has one


class StreamFormat(Protocol):
    """How one endpoint family writes its stream as SSE events."""

    output_events: tuple[str, ...]  # the entry types that mean "the output has started"

    def opening(self) -> Iterable[Event]:
        """Events sent before the first entry."""

    def output(self, entry_id: str, event: str, data: bytes) -> Event | None:
        """The SSE event for an output entry (None: not relayed)."""

    def closing(self, record: dict[str, Any], entry_id: str) -> Iterable[Event]:
        """The events that end a job that succeeded (``record`` is the job's)."""


def is_terminal_status(event: str, data: bytes) -> str | None:
    """The terminal status a stream entry announces, else None."""
    if event != p.EventType.STATUS:
        return None
    status = p.loads(data).get("status")
    return status if status in p.TERMINAL_STATUSES else None


def event(body: dict[str, Any], entry_id: str | None = None) -> Event:
    """An SSE event whose data is ``body`` as JSON."""
    item = {"data": orjson.dumps(body).decode()}
    if entry_id:
        item["id"] = entry_id
    return item


async def follow(queue: JobQueue, job_id: str, after: str = "0-0") -> AsyncIterator[Entry]:
    """The job's stream entries after ``after``, as they come, up to its terminal status.

    If the stream has no entry for a while, the job is re-read: a job that is gone or already
    terminal (its terminal entry read before ``after``) ends the iteration."""
    cursor = after
    lost_since: float | None = None
    while True:
        if queue.shutdown_due():  # the API is stopping: the stream ends with an error event
            raise server_shutting_down()
        try:
            entries = await _next_entries(queue, job_id, cursor)
            lost_since = None
        except REDIS_ERRORS:
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > RECONNECT_SEC:
                raise
            await anyio.sleep(0.25)
            continue
        if entries is None:
            return
        for entry_id, kind, data in entries:
            cursor = entry_id
            yield entry_id, kind, data
            if is_terminal_status(kind, data):
                return


async def _next_entries(queue: JobQueue, job_id: str, cursor: str) -> list[Entry] | None:
    """The next entries after ``cursor`` ([] if none came), None when the job is over."""
    entries = await queue.read_events(job_id, cursor, block_ms=BLOCK_MS)
    if not entries:
        record = await queue.read(job_id)
        status = record[p.JobField.STATUS].decode() if record else None
        if status in p.TERMINAL_STATUSES or record is None:
            # One last look: the terminal entry may have landed after the read.
            return await queue.read_events(job_id, cursor, block_ms=None) or None
    return entries


def job_events_response(queue: JobQueue, job_id: str, after: str) -> EventSourceResponse:
    """The job's stream entries verbatim (``event`` is the entry's type)."""

    async def events() -> AsyncIterator[dict[str, Any]]:
        try:
            async for entry_id, kind, data in follow(queue, job_id, after):
                yield {"id": entry_id, "event": kind, "data": data.decode()}
        except REDIS_ERRORS:  # resumable later with Last-Event-ID
            yield {"event": "error", "data": orjson.dumps(broker_unavailable().body()).decode()}
        except ServiceError as exc:  # the API is stopping; resumable elsewhere
            yield {"event": "error", "data": orjson.dumps(exc.body()).decode()}

    return _sse(events(), job_id)


async def stream_response(
    queue: JobQueue, job_id: str, request: Request, timeout: float, fmt: StreamFormat
) -> Response:
    """A streamed sync job as SSE; a plain HTTP error if it fails before any output."""
    try:
        head, cursor = await until_output(queue, job_id, request, timeout, fmt.output_events)
    except ClientGone:
        await queue.cancel(job_id)
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
    except BaseException:
        with anyio.CancelScope(shield=True):
            await queue.cancel(job_id)
        raise
    return _sse(relay(queue, job_id, head, cursor, fmt, ids=False), job_id)


def _sse(events: AsyncIterator[dict[str, Any]], job_id: str) -> EventSourceResponse:
    return EventSourceResponse(events, ping=PING_SEC, sep="\n", headers={"X-Job-ID": job_id})


def _restarted() -> ServiceError:
    return ServiceError(
        502,
        "the worker serving this stream died and the retry wrote a different answer; "
        "the text streamed so far is void: send the request again",
        code="stream_restarted",
    )


def _job_lost() -> ServiceError:
    return ServiceError(500, "the job expired before it finished", code="job_lost")


async def until_output(
    queue: JobQueue, job_id: str, request: Request, timeout: float, output_events: tuple[str, ...]
) -> tuple[list[Entry], str]:
    """Entries up to the first output or the terminal status (raising the job's error if it
    failed before any output), and the stream cursor after them."""
    head: list[Entry] = []
    cursor = "0-0"
    deadline = time.monotonic() + timeout
    while True:
        entries = await queue.read_events(job_id, cursor, block_ms=BLOCK_MS // 2)
        head += entries
        if entries:
            cursor = entries[-1][0]
        if any(kind in output_events for _, kind, _ in entries):
            return head, cursor
        terminal = next(filter(None, (is_terminal_status(e, d) for _, e, d in entries)), None)
        if terminal:
            record = await queue.read(job_id)
            if record is None:
                raise _job_lost()
            if terminal != p.JobStatus.SUCCEEDED:
                sync_response(record)  # raises the job's error (or 409 for cancelled)
            return head, cursor
        if not entries:
            if await request.is_disconnected():
                raise ClientGone()
            if queue.shutdown_due():
                raise server_shutting_down()
            if time.monotonic() > deadline:
                record = await queue.read(job_id)
                running = record is not None and (
                    record[p.JobField.STATUS].decode() == p.JobStatus.RUNNING
                )  # a retry would run it again (the route cancels it now)
                raise ServiceError(
                    504, f"no output within {timeout:.0f}s", code="timeout", final=running
                )
            if await queue.read(job_id) is None:
                raise _job_lost()


async def relay(
    queue: JobQueue,
    job_id: str,
    head: list[Entry],
    cursor: str,
    fmt: StreamFormat,
    *,
    ids: bool = True,
) -> AsyncIterator[Event]:
    """``head`` then the entries after ``cursor`` as SSE events, up to the job's end
    (without ``ids``, output events carry no ``id:`` line)."""
    finished = False

    async def entries() -> AsyncIterator[Entry]:
        for entry in head:
            yield entry
        async for entry in follow(queue, job_id, cursor):
            yield entry

    try:
        for item in fmt.opening():
            yield item
        async for entry_id, kind, data in entries():
            if status := is_terminal_status(kind, data):
                finished = True
                for item in await _ending(queue, job_id, status, entry_id, fmt):
                    yield item
                return
            if kind == p.EventType.RESTART:  # the text relayed so far cannot be unsent
                yield event(_restarted().body())
                return  # the job is cancelled: nobody reads the rest
            if (item := fmt.output(entry_id, kind, data)) is not None:
                if not ids:
                    item.pop("id", None)
                yield item
        finished = True  # the job vanished (expired) without a terminal entry
        yield event(ServiceError(500, "the job was lost", code="job_lost").body())
    except REDIS_ERRORS:
        finished = True  # nothing to cancel it with; the stream ends with an error
        yield event(broker_unavailable().body())
    except ServiceError as exc:  # the API is stopping: its job is cancelled (finally)
        yield event(exc.body())
    finally:
        if not finished:  # the client went away: stop the job
            with anyio.CancelScope(shield=True):
                await queue.cancel(job_id)


async def _ending(
    queue: JobQueue, job_id: str, status: str, entry_id: str, fmt: StreamFormat
) -> list[Event]:
    record = await queue.read(job_id)
    if status == p.JobStatus.SUCCEEDED and record is not None:
        return list(fmt.closing(record, entry_id))
    if status == p.JobStatus.CANCELLED:
        error = ServiceError(
            409, "the request was cancelled before it finished", code="cancelled", final=True
        )
    else:
        error = (job_error(record) if record else None) or ServiceError(
            500, "the job failed", code="internal_error"
        )
    return [event(error.body())]
