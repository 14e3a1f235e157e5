"""Speech to text (OpenAI-compatible, multipart): sync routes and polled jobs.

* ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations``: the response is the
  transcript as ``json``, ``text``, ``srt``, ``vtt`` (text bodies) or ``verbose_json``; with
  ``stream=true``, Server-Sent Events ``transcript.text.delta`` (one per segment, as the worker
  produces them) and a final ``transcript.text.done``.
* ``POST /v1/jobs/audio/transcriptions`` and ``POST /v1/jobs/audio/translations``: the same
  form, answered ``202`` with a job (``GET /v1/jobs/{id}`` shows its progress and the segments
  so far; the ``result`` is what the sync route returns, a JSON string for the text formats).

The form is read by :mod:`api.audio_form` (the upload streamed into the blob store). Decoding
happens in the worker: undecodable audio is a 400 ``invalid_audio`` from there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from api.audio_form import FORMS, delete_upload, receive
from api.deps import SubmitterDep
from api.queue import ClientGone
from api.responses import sync_response
from api.sse import Event, event, stream_response
from api.submit import Submitter, client_gone
from inferq import audio as a
from inferq import protocol as p

router = APIRouter(tags=["audio"])


async def _start(submit: Submitter, request: Request, endpoint: p.Endpoint, *, job: bool):
    """Receive the form and submit its job; returns (job id, the job's request)."""
    entry, job_request, metadata = await receive(
        request, submit.queue, submit.settings, endpoint, job=job
    )
    try:
        job_id = await submit.start(
            endpoint,
            entry,
            job_request,
            kind=p.JobKind.JOB if job else p.JobKind.SYNC,
            metadata=metadata,
            wait=not job_request["stream"],
        )
    except BaseException:
        await delete_upload(submit.queue, job_request["blob"])
        raise
    return job_id, job_request


async def _sync(submit: Submitter, request: Request, endpoint: p.Endpoint) -> Response:
    job_id, job_request = await _start(submit, request, endpoint, job=False)
    timeout = submit.settings.sync_timeout_sec
    if job_request["stream"]:
        return await stream_response(submit.queue, job_id, request, timeout, _TranscriptEvents())
    try:
        record = await submit.wait(job_id)
    except ClientGone:
        return client_gone()
    return audio_response(record, job_request["response_format"])


async def _job(submit: Submitter, request: Request, endpoint: p.Endpoint) -> Response:
    job_id, _ = await _start(submit, request, endpoint, job=True)
    return await submit.accepted(job_id)


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


class _TranscriptEvents:
    """The OpenAI transcription stream (an :class:`api.sse.StreamFormat`)."""

    output_events = (p.EventType.DELTA,)

    def opening(self) -> Iterable[Event]:
        return []

    def output(self, entry_id: str, kind: str, data: bytes) -> Event | None:
        if kind != p.EventType.DELTA:
            return None
        delta = p.loads(data)["content"]
        return event({"type": "transcript.text.delta", "delta": delta}, entry_id)

    def closing(self, record: dict[str, Any], entry_id: str) -> Iterable[Event]:
        """The done event: the text, and the json body's ``usage`` (transcriptions)."""
        body = p.loads(record[p.JobField.RESULT])
        done = {"type": "transcript.text.done", "text": body["text"]}
        if "usage" in body:
            done["usage"] = body["usage"]
        if "logprobs" in body:  # include[]=logprobs
            done["logprobs"] = body["logprobs"]
        return [event(done, entry_id)]


def _route(
    serve: Callable[[Submitter, Request, p.Endpoint], Awaitable[Response]], endpoint: p.Endpoint
):
    async def route(request: Request, submit: SubmitterDep) -> Response:
        return await serve(submit, request, endpoint)

    return route


def _add_routes() -> None:
    routes = [
        ("/audio/transcriptions", _sync, "create_transcription", "Transcribe audio"),
        ("/audio/translations", _sync, "create_translation", "Translate audio into English text"),
        (
            "/jobs/audio/transcriptions",
            _job,
            "create_transcription_job",
            "Transcribe audio as a job",
        ),
        ("/jobs/audio/translations", _job, "create_translation_job", "Translate audio as a job"),
    ]
    for path, serve, name, summary in routes:
        endpoint = p.Endpoint("/v1" + path.removeprefix("/jobs"))
        schema = FORMS[endpoint].multipart_schema()
        router.add_api_route(
            path,
            _route(serve, endpoint),
            methods=["POST"],
            summary=summary,
            name=name,
            status_code=202 if serve is _job else 200,
            tags=["jobs"] if serve is _job else None,
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": schema}},
                }
            },
        )


_add_routes()
