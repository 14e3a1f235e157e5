"""``POST /v1/completions`` (OpenAI's legacy text completion), plain or streamed (SSE).

A streamed completion is relayed from the job's event stream by :mod:`api.sse`: each ``delta``
as a ``text_completion`` chunk of its choice, then one chunk per choice with its
``finish_reason``, the usage chunk when ``stream_options.include_usage`` is set, and
``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request, Response

from api.deps import SubmitterDep
from api.prepare import prepare_completions
from api.sse import Event, stream_response
from inferq import protocol as p
from inferq.openai.completions import CompletionChunks, CompletionRequest

router = APIRouter(tags=["completions"])


@router.post("/completions", summary="Create a text completion (legacy)")
async def create_completion(
    body: CompletionRequest, request: Request, submit: SubmitterDep
) -> Response:
    entry, job_request = await prepare_completions(body, submit.queue, submit.settings, job=False)
    if not body.stream:
        return await submit.answer(p.Endpoint.COMPLETIONS, entry, job_request)
    job_id = await submit.start(
        p.Endpoint.COMPLETIONS, entry, job_request, kind=p.JobKind.SYNC, wait=False
    )
    chunks = _CompletionStream(job_id, entry.name, job_request["created"], body.include_usage)
    return await stream_response(
        submit.queue, job_id, request, submit.settings.sync_timeout_sec, chunks
    )


class _CompletionStream(CompletionChunks):
    """The chunk builder as an :class:`api.sse.StreamFormat`."""

    output_events = (p.EventType.DELTA,)

    def opening(self) -> Iterable[Event]:
        return []

    def output(self, entry_id: str, event: str, data: bytes) -> Event | None:
        if event == p.EventType.DELTA:
            return {"id": entry_id, "data": self.delta(data)}
        return None

    def closing(self, record: dict[str, Any], entry_id: str) -> Iterable[Event]:
        result = p.loads(record[p.JobField.RESULT])
        for choice in result["choices"]:
            yield {"data": self.finish(choice["index"], choice["finish_reason"])}
        if self.include_usage:
            yield {"data": self.usage(result["usage"])}
        yield {"data": "[DONE]"}
