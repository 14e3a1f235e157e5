"""Speech to text (OpenAI-compatible, multipart): sync routes and polled jobs.

* ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations``: the response is the
  transcript as ``json``, ``text``, ``srt``, ``vtt`` (text bodies) or ``verbose_json``; with
  ``stream=true``, Server-Sent Events ``transcript.text.delta`` (one per segment, as the worker
  produces them) and a final ``transcript.text.done``.
* ``POST /v1/jobs/audio/transcriptions`` and ``POST /v1/jobs/audio/translations``: the same
  form, answered ``202`` with a job (``GET /v1/jobs/{id}`` shows its progress and the segments
  so far; the ``result`` is what the sync route returns, a JSON string for the text formats).

The upload is streamed into the blob store (never whole in memory, never in a broker
message); the job carries the blob's id, and the worker deletes the blob when the job ends
(it expires with the job otherwise). Decoding happens in the worker: undecodable audio is a
400 ``invalid_audio`` from there.
"""

from __future__ import annotations

import json
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
from api.routes.results import job_error, json_response, render_job, sync_response
from api.uploads import receive_form
from inferq import audio as a
from inferq import protocol as p
from inferq.blobs import AsyncBlobs, new_blob_id
from inferq.catalog import ModelEntry
from inferq.errors import ServiceError, bad_request
from inferq.settings import Settings

router = APIRouter(tags=["audio"])

TRANSCRIPTION_FIELDS = frozenset(
    {
        "model",
        "language",
        "prompt",
        "temperature",
        "response_format",
        "timestamp_granularities[]",
        "timestamp_granularities",
        "stream",
        "metadata",
        # Sent by some OpenAI clients; nothing to do with Whisper models.
        "chunking_strategy",
        "include[]",
        "include",
        "user",
    }
)
TRANSLATION_FIELDS = TRANSCRIPTION_FIELDS - {"language", "timestamp_granularities[]"}


def _one(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"'{name}' was given more than once", param=name)
    return values[0].strip()


def _boolean(value: str | None, name: str) -> bool:
    if value is None or value.lower() in ("", "false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise bad_request(f"invalid value for '{name}': expected true or false", param=name)


def _metadata(value: str | None) -> dict[str, str] | None:
    if not value:
        return None
    try:
        metadata = json.loads(value)
    except ValueError:
        metadata = None
    if (
        not isinstance(metadata, dict)
        or len(metadata) > 16
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise bad_request(
            "metadata must be a JSON object of at most 16 string values", param="metadata"
        )
    return metadata


def normalize(fields: dict[str, list[str]], endpoint: p.Endpoint, *, job: bool) -> dict[str, Any]:
    """The request the worker gets (without the upload), validated; errors name the field."""
    translate = endpoint is p.Endpoint.AUDIO_TRANSLATIONS
    allowed = TRANSLATION_FIELDS if translate else TRANSCRIPTION_FIELDS
    for name in fields:
        if name not in allowed:
            what = "translations" if translate else "transcriptions"
            raise bad_request(f"unknown parameter '{name}' for {what}", param=name)
    model = _one(fields, "model")
    if not model:
        raise bad_request("missing required parameter 'model'", param="model")
    response_format = _one(fields, "response_format") or "json"
    if response_format not in a.RESPONSE_FORMATS:
        raise bad_request(
            f"response_format must be one of {', '.join(a.RESPONSE_FORMATS)}",
            param="response_format",
        )
    temperature = None
    if raw := _one(fields, "temperature"):
        try:
            temperature = float(raw)
        except ValueError:
            temperature = -1.0
        if not 0.0 <= temperature <= 1.0:
            raise bad_request("temperature must be a number from 0 to 1", param="temperature")
    granularities = [
        g.strip()
        for g in fields.get("timestamp_granularities[]", [])
        + fields.get("timestamp_granularities", [])
    ]
    for granularity in granularities:
        if granularity not in a.TIMESTAMP_GRANULARITIES:
            raise bad_request(
                "timestamp_granularities must be 'segment' and/or 'word'",
                param="timestamp_granularities",
            )
    if granularities and response_format != "verbose_json":
        raise bad_request(
            "timestamp_granularities need response_format 'verbose_json'",
            param="timestamp_granularities",
        )
    stream = _boolean(_one(fields, "stream"), "stream")
    if stream and job:
        raise bad_request(
            "a job does not stream: follow GET /v1/jobs/{id}/events instead", param="stream"
        )
    if stream and response_format not in ("json", "text"):
        raise bad_request("stream=true works with response_format 'json' or 'text'", param="stream")
    metadata = _metadata(_one(fields, "metadata"))
    if metadata and not job:
        raise bad_request("metadata is only accepted by the job routes", param="metadata")
    return {
        "model": model,
        "task": "translate" if translate else "transcribe",
        "language": None if translate else (_one(fields, "language") or None),
        "prompt": _one(fields, "prompt") or None,
        "temperature": temperature,
        "response_format": "json" if stream else response_format,
        "timestamp_granularities": list(dict.fromkeys(granularities)),
        "stream": stream,
        "metadata": metadata,
    }


async def receive(
    request: Request, queue: JobQueue, settings: Settings, endpoint: p.Endpoint, *, job: bool
) -> tuple[ModelEntry, dict[str, Any], dict[str, str] | None]:
    """Read the form, the audio into a new blob; returns (entry, job request, metadata)."""
    limit = settings.max_audio_bytes
    if not job:
        limit = min(limit, settings.max_audio_sync_bytes)
    checked: dict[str, ModelEntry] = {}

    async def on_file_start(fields: dict[str, list[str]]) -> None:
        if "model" in fields:  # validate before storing any audio
            params = normalize(fields, endpoint, job=job)
            checked["entry"] = await queue.require_served(params["model"], endpoint)

    blobs = AsyncBlobs(queue.redis)
    blob_id = new_blob_id("audio")
    fields, upload = await receive_form(
        request,
        blobs,
        blob_id,
        limit=limit,
        ttl=settings.result_ttl_sec,
        on_file_start=on_file_start,
    )
    try:
        params = normalize(fields, endpoint, job=job)
        if not upload.present:
            raise bad_request("missing required parameter 'file'", param="file")
        if upload.size == 0:
            raise bad_request("the audio file is empty", param="file", code="invalid_audio")
        entry = checked.get("entry") or await queue.require_served(params["model"], endpoint)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await blobs.delete(blob_id)
        raise
    metadata = params.pop("metadata")
    params.update(model=entry.name, blob=blob_id, bytes=upload.size, filename=upload.filename[:256])
    return entry, params, metadata


async def submit(
    queue: JobQueue,
    endpoint: p.Endpoint,
    entry: ModelEntry,
    job_request: dict[str, Any],
    *,
    kind: p.JobKind,
    owner: str,
    request_id: str,
    metadata: dict[str, str] | None = None,
) -> str:
    try:
        return await queue.submit(
            endpoint=endpoint,
            entry=entry,
            request=job_request,
            kind=kind,
            owner=owner,
            request_id=request_id,
            metadata=metadata,
            wait=not job_request["stream"],
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await AsyncBlobs(queue.redis).delete(job_request["blob"])
        raise


def audio_response(record: dict[str, Any], response_format: str) -> Response:
    """A finished sync job as the route's response: text formats as text/plain."""
    if (
        response_format in a.TEXT_FORMATS
        and record[p.JobField.STATUS].decode() == p.JobStatus.SUCCEEDED
    ):
        return Response(
            orjson.loads(record[p.JobField.RESULT]),
            media_type="text/plain; charset=utf-8",
            headers={"X-Job-ID": record[p.JobField.ID].decode()},
        )
    return sync_response(record)


async def _sync(
    request: Request,
    queue: JobQueue,
    settings: Settings,
    owner: str,
    request_id: str,
    endpoint: p.Endpoint,
) -> Response:
    entry, job_request, _ = await receive(request, queue, settings, endpoint, job=False)
    job_id = await submit(
        queue, endpoint, entry, job_request, kind=p.JobKind.SYNC, owner=owner, request_id=request_id
    )
    if job_request["stream"]:
        return await _stream(queue, job_id, request, settings.sync_timeout_sec)
    record = await queue.wait(job_id, settings.sync_timeout_sec)
    return audio_response(record, job_request["response_format"])


async def _job(
    request: Request,
    queue: JobQueue,
    settings: Settings,
    owner: str,
    request_id: str,
    endpoint: p.Endpoint,
) -> Response:
    entry, job_request, metadata = await receive(request, queue, settings, endpoint, job=True)
    job_id = await submit(
        queue,
        endpoint,
        entry,
        job_request,
        kind=p.JobKind.JOB,
        owner=owner,
        request_id=request_id,
        metadata=metadata,
    )
    return json_response(render_job(await queue.read(job_id)), status_code=202)


def _form_schema(translate: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string"},
        "prompt": {"type": "string"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "response_format": {"type": "string", "enum": list(a.RESPONSE_FORMATS)},
        "stream": {"type": "boolean", "description": "sync routes only"},
        "metadata": {"type": "string", "description": "job routes only: a JSON object"},
    }
    if not translate:
        properties["language"] = {"type": "string", "description": "ISO-639-1 code"}
        properties["timestamp_granularities[]"] = {
            "type": "array",
            "items": {"type": "string", "enum": list(a.TIMESTAMP_GRANULARITIES)},
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "model"],
                        "properties": properties,
                    }
                }
            },
        }
    }


@router.post(
    "/audio/transcriptions",
    summary="Transcribe audio",
    openapi_extra=_form_schema(translate=False),
)
async def create_transcription(
    request: Request, queue: QueueDep, settings: SettingsDep, owner: OwnerDep, rid: RequestIdDep
) -> Response:
    return await _sync(request, queue, settings, owner, rid, p.Endpoint.AUDIO_TRANSCRIPTIONS)


@router.post(
    "/audio/translations",
    summary="Translate audio into English text",
    openapi_extra=_form_schema(translate=True),
)
async def create_translation(
    request: Request, queue: QueueDep, settings: SettingsDep, owner: OwnerDep, rid: RequestIdDep
) -> Response:
    return await _sync(request, queue, settings, owner, rid, p.Endpoint.AUDIO_TRANSLATIONS)


@router.post(
    "/jobs/audio/transcriptions",
    status_code=202,
    summary="Transcribe audio as a job",
    tags=["jobs"],
    openapi_extra=_form_schema(translate=False),
)
async def create_transcription_job(
    request: Request, queue: QueueDep, settings: SettingsDep, owner: OwnerDep, rid: RequestIdDep
) -> Response:
    return await _job(request, queue, settings, owner, rid, p.Endpoint.AUDIO_TRANSCRIPTIONS)


@router.post(
    "/jobs/audio/translations",
    status_code=202,
    summary="Translate audio as a job",
    tags=["jobs"],
    openapi_extra=_form_schema(translate=True),
)
async def create_translation_job(
    request: Request, queue: QueueDep, settings: SettingsDep, owner: OwnerDep, rid: RequestIdDep
) -> Response:
    return await _job(request, queue, settings, owner, rid, p.Endpoint.AUDIO_TRANSLATIONS)


async def prepare_job(body: dict[str, Any], queue: JobQueue, settings: Settings):
    """``POST /v1/jobs`` takes JSON, which cannot carry audio: point at the multipart route."""
    raise bad_request(
        "audio jobs take a multipart upload: POST /v1/jobs/audio/transcriptions "
        "or /v1/jobs/audio/translations",
        param="endpoint",
    )


# --- streaming ------------------------------------------------------------------------------


class _ClientGone(Exception):
    pass


async def _stream(queue: JobQueue, job_id: str, request: Request, timeout: float) -> Response:
    try:
        head, cursor = await _until_output(queue, job_id, request, timeout)
    except _ClientGone:
        await queue.cancel(job_id)
        return Response(status_code=499)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await queue.cancel(job_id)
        raise
    return EventSourceResponse(
        _relay(queue, job_id, head, cursor), ping=PING_SEC, sep="\n", headers={"X-Job-ID": job_id}
    )


async def _until_output(
    queue: JobQueue, job_id: str, request: Request, timeout: float
) -> tuple[list[tuple[str, str, bytes]], str]:
    """Stream entries up to the first text or the end (raising the job's error if it failed
    first, so the client gets a plain HTTP error), and the cursor after them."""
    head: list[tuple[str, str, bytes]] = []
    cursor = "0-0"
    deadline = time.monotonic() + timeout
    while True:
        entries = await queue.read_events(job_id, cursor, block_ms=BLOCK_MS // 2)
        head += entries
        if entries:
            cursor = entries[-1][0]
        if any(event == p.EventType.DELTA for _, event, _ in entries):
            return head, cursor
        terminal = next(filter(None, (is_terminal_status(e, d) for _, e, d in entries)), None)
        if terminal:
            record = await queue.read(job_id)
            if record is None:
                raise ServiceError(500, "the job expired before it finished", code="job_lost")
            if terminal != p.JobStatus.SUCCEEDED:
                sync_response(record)  # raises the job's error (409 when cancelled)
            return head, cursor
        if not entries:
            if await request.is_disconnected():
                raise _ClientGone()
            if time.monotonic() > deadline:
                raise ServiceError(504, f"no output within {timeout:.0f}s", code="timeout")


def _event(body: dict[str, Any], entry_id: str | None = None) -> dict[str, str]:
    item = {"data": orjson.dumps(body).decode()}
    if entry_id:
        item["id"] = entry_id
    return item


async def _relay(
    queue: JobQueue, job_id: str, head: list[tuple[str, str, bytes]], cursor: str
) -> AsyncIterator[dict[str, str]]:
    finished = False

    async def entries() -> AsyncIterator[tuple[str, str, bytes]]:
        for entry in head:
            yield entry
        async for entry in follow(queue, job_id, cursor):
            yield entry

    try:
        async for entry_id, event, data in entries():
            if event == p.EventType.DELTA:
                delta = p.loads(data)["content"]
                yield _event({"type": "transcript.text.delta", "delta": delta}, entry_id)
            elif status := is_terminal_status(event, data):
                finished = True
                record = await queue.read(job_id)
                if status == p.JobStatus.SUCCEEDED and record is not None:
                    text = p.loads(record[p.JobField.RESULT])["text"]
                    yield _event({"type": "transcript.text.done", "text": text}, entry_id)
                    return
                if status == p.JobStatus.CANCELLED:
                    error = ServiceError(409, "the request was cancelled", code="cancelled")
                else:
                    error = (job_error(record) if record else None) or ServiceError(
                        500, "the job failed", code="internal_error"
                    )
                yield _event(error.body())
                return
        finished = True
        yield _event(ServiceError(500, "the job was lost", code="job_lost").body())
    finally:
        if not finished:  # the client went away: stop the transcription
            with anyio.CancelScope(shield=True):
                await queue.cancel(job_id)
