"""The audio routes' multipart form: the upload streamed into a new blob, the fields validated
(:mod:`inferq.openai.audio`) and turned into the request the worker gets.

The upload never sits whole in memory nor in a broker message: the job carries the blob's id,
and the worker deletes the blob when the job ends (it expires with the job otherwise). The
fields read before the file part are validated before any audio is stored.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import Request

from api.queue import JobQueue
from api.uploads import receive_form
from inferq import protocol as p
from inferq.blobs import AsyncBlobs, new_blob_id
from inferq.catalog import ModelEntry
from inferq.errors import bad_request
from inferq.openai.audio import TranscriptionForm, TranslationForm, parse_form
from inferq.openai.transcripts import TranscriptionJob
from inferq.settings import Settings

FORMS: dict[p.Endpoint, type[TranslationForm]] = {
    p.Endpoint.AUDIO_TRANSCRIPTIONS: TranscriptionForm,
    p.Endpoint.AUDIO_TRANSLATIONS: TranslationForm,
}


def normalize(fields: dict[str, list[str]], endpoint: p.Endpoint, *, job: bool) -> dict[str, Any]:
    """The request the worker gets (without the upload), validated; errors name the field."""
    form = parse_form(fields, FORMS[endpoint])
    if form.stream and job:
        raise bad_request(
            "a job does not stream: follow GET /v1/jobs/{id}/events instead", param="stream"
        )
    if form.metadata and not job:
        raise bad_request("metadata is only accepted by the job routes", param="metadata")
    translate = endpoint is p.Endpoint.AUDIO_TRANSLATIONS
    granularities = getattr(form, "timestamp_granularities", [])
    return {
        "model": form.model,
        "task": "translate" if translate else "transcribe",
        "language": getattr(form, "language", None),
        "prompt": form.prompt,
        "temperature": form.temperature,
        "response_format": "json" if form.stream else form.response_format,
        "timestamp_granularities": list(dict.fromkeys(granularities)),
        "stream": form.stream,
        "vad": form.vad(),
        "logprobs": "logprobs" in getattr(form, "include", []),
        "metadata": form.metadata,
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
        await delete_upload(queue, blob_id)
        raise
    metadata = params.pop("metadata")
    params.update(model=entry.name, blob=blob_id, bytes=upload.size, filename=upload.filename[:256])
    return entry, TranscriptionJob(**params).wire(), metadata


async def delete_upload(queue: JobQueue, blob_id: str) -> None:
    """Delete the upload of a request that fails before its job runs (even when cancelled)."""
    with anyio.CancelScope(shield=True):
        await AsyncBlobs(queue.redis).delete(blob_id)
