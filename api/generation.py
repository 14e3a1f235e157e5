"""The text-generation routes' one flow (``/v1/chat/completions``, ``/v1/completions``).

A prepared request is answered whole (a sync job's stored result), or streamed: the job is
submitted without waiting for a worker, and its event stream is relayed by :mod:`api.sse` as
SSE with the route's chunk builder (a :class:`api.sse.StreamFormat`). The job id is in
``X-Job-ID``; if the client disconnects, the job is cancelled and the worker drops it within
one decoding step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from fastapi import Request, Response

from api.prepare import Prepared
from api.sse import Event, StreamFormat, stream_response
from api.submit import Submitter
from inferq import protocol as p


class Chunks(Protocol):
    """Makes a job's chunk builder (the chunk classes' constructor)."""

    def __call__(self, job_id: str, model: str, created: int, include_usage: bool) -> StreamFormat:
        """The builder for the chunks of job ``job_id``."""


class Body(Protocol):
    """What the flow reads of a validated request body."""

    stream: bool | None

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""


async def answer_or_stream(
    submit: Submitter,
    request: Request,
    endpoint: p.Endpoint,
    body: Body,
    prepared: Prepared,
    chunks: Chunks,
) -> Response:
    """The sync job's result as the response, or (``body.stream``) its chunks as SSE."""
    entry, job_request = prepared
    if not body.stream:
        return await submit.answer(endpoint, entry, job_request)
    job_id = await submit.start(endpoint, entry, job_request, kind=p.JobKind.SYNC, wait=False)
    fmt = chunks(job_id, entry.name, job_request["created"], body.include_usage)
    return await stream_response(
        submit.queue, job_id, request, submit.settings.sync_timeout_sec, fmt
    )


class ChoiceChunks(Protocol):
    """A chunk builder with one finish chunk per choice and a usage chunk."""

    include_usage: bool

    def finish(self, *, index: int, finish_reason: str) -> str: ...

    def usage(self, usage: dict[str, Any]) -> str: ...


def closing_chunks(fmt: ChoiceChunks, record: dict[str, Any]) -> Iterator[Event]:
    """The end of a stream whose job succeeded (``record`` is the job's): each choice's finish
    chunk, the usage chunk when ``stream_options.include_usage`` is set, and ``[DONE]``."""
    result = p.loads(record[p.JobField.RESULT])
    for choice in result["choices"]:
        yield {"data": fmt.finish(index=choice["index"], finish_reason=choice["finish_reason"])}
    if fmt.include_usage:
        yield {"data": fmt.usage(result["usage"])}
    yield {"data": "[DONE]"}
