"""``POST /v1/completions`` (OpenAI's legacy text completion), plain or streamed (SSE).

Answered or streamed by :mod:`api.generation`. A streamed completion is relayed from the job's
event stream by :mod:`api.sse`: each ``delta`` as a ``text_completion`` chunk of its choice,
then one chunk per choice with its ``finish_reason``, the usage chunk when
``stream_options.include_usage`` is set, and ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request, Response

from api.deps import SubmitterDep
from api.generation import answer_or_stream, closing_chunks
from api.prepare import prepare_completions
from api.sse import Event
from inferq import protocol as p
from inferq.openai.completions import CompletionChunks, CompletionRequest

router = APIRouter(tags=["completions"])


@router.post("/completions", summary="Create a text completion (legacy)")
async def create_completion(
    body: CompletionRequest, request: Request, submit: SubmitterDep
) -> Response:
    prepared = await prepare_completions(body, submit.queue, submit.settings, job=False)
    return await answer_or_stream(
        submit, request, p.Endpoint.COMPLETIONS, body, prepared, _CompletionStream
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
        return closing_chunks(self, record)
