"""``POST /v1/chat/completions`` (OpenAI-compatible), plain or streamed (SSE).

A streamed completion is read from the job's event stream (Redis), not from the worker: the
route waits until the output starts (so a request the worker rejects still gets a plain HTTP
error), then relays each ``delta`` as a ``chat.completion.chunk`` (an upstream proxy's
``chunk`` entries verbatim), then the final chunk with ``finish_reason``, the usage chunk when
``stream_options.include_usage`` is set, and ``data: [DONE]``. A slow client loses nothing (the
stream is kept with the job); the job id is in ``X-Job-ID`` and every SSE event carries its
stream entry id, so ``GET /v1/jobs/{id}/events`` with ``Last-Event-ID`` can resume it. If the
client disconnects, the job is cancelled; the worker drops it within one decoding step.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from api.deps import OwnerDep, QueueDep, RequestIdDep, SettingsDep
from api.queue import JobQueue
from api.routes.events import BLOCK_MS, PING_SEC, follow, is_terminal_status
from api.routes.results import job_error, parse_body, sync_response
from inferq import protocol as p
from inferq.catalog import ModelEntry
from inferq.errors import ServiceError
from inferq.openai.chat import ChatCompletionRequest, check_chat_for_model, image_urls
from inferq.settings import Settings

router = APIRouter(tags=["chat"])

OUTPUT_EVENTS = (p.EventType.DELTA, p.EventType.CHUNK)


async def prepare(
    body: ChatCompletionRequest, queue: JobQueue, settings: Settings
) -> tuple[ModelEntry, dict[str, Any]]:
    """Validate against the serving model; returns (entry, the request the worker gets)."""
    entry = await queue.require_served(body.model, p.Endpoint.CHAT)
    created = int(time.time())
    if entry.is_proxy:
        return entry, body.proxied(model=entry.name, created=created).wire()
    job = body.normalized(max_stop=settings.chat_max_stop_sequences)
    job.model, job.created = entry.name, created
    capabilities = []
    if image_urls(job.messages):
        info = (await queue.model_infos(cached=True)).get(entry.name, {})
        capabilities = info.get("capabilities", [])
    check_chat_for_model(
        job,
        model=entry.name,
        structured_outputs=entry.supports_structured_outputs,
        capabilities=capabilities,
        settings=settings,
    )
    return entry, job.wire()


async def prepare_job(body: dict[str, Any], queue: JobQueue, settings: Settings):
    """The same request submitted through ``POST /v1/jobs`` (its text is on /events)."""
    return await prepare(parse_body(ChatCompletionRequest, body), queue, settings)


@router.post("/chat/completions", summary="Create a chat completion")
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    queue: QueueDep,
    settings: SettingsDep,
    owner: OwnerDep,
    request_id: RequestIdDep,
) -> Response:
    entry, job_request = await prepare(body, queue, settings)
    stream = bool(body.stream)
    job_id = await queue.submit(
        endpoint=p.Endpoint.CHAT,
        entry=entry,
        request=job_request,
        kind=p.JobKind.SYNC,
        owner=owner,
        request_id=request_id,
        wait=not stream,
    )
    if not stream:
        record = await queue.wait(job_id, settings.sync_timeout_sec)
        return sync_response(record)
    try:
        head, cursor = await _until_output(queue, job_id, request, settings.sync_timeout_sec)
    except _ClientGone:
        await queue.cancel(job_id)
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
    except BaseException:
        with anyio.CancelScope(shield=True):
            await queue.cancel(job_id)
        raise
    chunks = _ChunkFormat(job_id, entry.name, job_request["created"], body.include_usage)
    return EventSourceResponse(
        _relay(queue, job_id, head, cursor, chunks, proxy=entry.is_proxy),
        ping=PING_SEC,
        sep="\n",
        headers={"X-Job-ID": job_id},
    )


class _ClientGone(Exception):
    pass


async def _until_output(
    queue: JobQueue, job_id: str, request: Request, timeout: float
) -> tuple[list[tuple[str, str, bytes]], str]:
    """Entries up to the first output or the terminal status (raising the job's error if it
    failed before any output), and the stream cursor after them."""
    head: list[tuple[str, str, bytes]] = []
    cursor = "0-0"
    deadline = time.monotonic() + timeout
    while True:
        entries = await queue.read_events(job_id, cursor, block_ms=BLOCK_MS // 2)
        head += entries
        if entries:
            cursor = entries[-1][0]
        if any(event in OUTPUT_EVENTS for _, event, _ in entries):
            return head, cursor
        terminal = next(filter(None, (is_terminal_status(e, d) for _, e, d in entries)), None)
        if terminal:
            record = await queue.read(job_id)
            if record is None:
                raise ServiceError(500, "the job expired before it finished", code="job_lost")
            if terminal != p.JobStatus.SUCCEEDED:
                sync_response(record)  # raises the job's error (or 409 for cancelled)
            return head, cursor
        if not entries:
            if await request.is_disconnected():
                raise _ClientGone()
            if time.monotonic() > deadline:
                raise ServiceError(504, f"no output within {timeout:.0f}s", code="timeout")
            record = await queue.read(job_id)
            if record is None:
                raise ServiceError(500, "the job expired before it finished", code="job_lost")


class _ChunkFormat:
    """``chat.completion.chunk`` JSON, built around the stored deltas without re-encoding."""

    def __init__(self, job_id: str, model: str, created: int, include_usage: bool):
        self.include_usage = include_usage
        head = {
            "id": p.completion_id(job_id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self._prefix = orjson.dumps(head)[:-1] + b',"choices":[{"index":0,"delta":'
        self._suffix = b',"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}' if include_usage else b"}"
        )
        self._head = head

    def delta(self, data: bytes) -> str:
        """A chunk whose delta is ``data`` (the stored ``{"content": ...}`` JSON)."""
        return (self._prefix + data + self._suffix).decode()

    def role(self) -> str:
        return self.delta(b'{"role":"assistant","content":""}')

    def finish(self, finish_reason: str) -> str:
        choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
        extra = {"usage": None} if self.include_usage else {}
        return orjson.dumps({**self._head, "choices": [choice], **extra}).decode()

    def usage(self, usage: dict[str, Any]) -> str:
        return orjson.dumps({**self._head, "choices": [], "usage": usage}).decode()


def _error_event(error: ServiceError) -> dict[str, str]:
    return {"data": orjson.dumps(error.body()).decode()}


async def _relay(
    queue: JobQueue,
    job_id: str,
    head: list[tuple[str, str, bytes]],
    cursor: str,
    chunks: _ChunkFormat,
    *,
    proxy: bool,
) -> AsyncIterator[dict[str, str]]:
    finished = False

    async def entries() -> AsyncIterator[tuple[str, str, bytes]]:
        for entry in head:
            yield entry
        async for entry in follow(queue, job_id, cursor):
            yield entry

    try:
        if not proxy:
            yield {"data": chunks.role()}
        async for entry_id, event, data in entries():
            if event == p.EventType.DELTA:
                yield {"id": entry_id, "data": chunks.delta(data)}
            elif event == p.EventType.CHUNK:
                yield {"id": entry_id, "data": data.decode()}
            elif status := is_terminal_status(event, data):
                finished = True
                async for item in _ending(queue, job_id, status, chunks, proxy=proxy):
                    yield item
                return
        finished = True  # the job vanished (expired) without a terminal entry
        yield _error_event(ServiceError(500, "the job was lost", code="job_lost"))
    finally:
        if not finished:  # the client went away: stop the generation
            with anyio.CancelScope(shield=True):
                await queue.cancel(job_id)


async def _ending(
    queue: JobQueue, job_id: str, status: str, chunks: _ChunkFormat, *, proxy: bool
) -> AsyncIterator[dict[str, str]]:
    record = await queue.read(job_id)
    if status == p.JobStatus.SUCCEEDED and record is not None:
        if not proxy:
            result = p.loads(record[p.JobField.RESULT])
            yield {"data": chunks.finish(result["choices"][0]["finish_reason"])}
            if chunks.include_usage:
                yield {"data": chunks.usage(result["usage"])}
        yield {"data": "[DONE]"}
        return
    if status == p.JobStatus.CANCELLED:
        error = ServiceError(409, "the request was cancelled before it finished", code="cancelled")
    else:
        error = (job_error(record) if record else None) or ServiceError(
            500, "the job failed", code="internal_error"
        )
    yield _error_event(error)
