"""``POST /v1/chat/completions`` (OpenAI-compatible), plain or streamed (SSE).

Answered or streamed by :mod:`api.generation`. A streamed completion is relayed from the job's
event stream by :mod:`api.sse`: each ``delta`` as a ``chat.completion.chunk`` (an upstream
proxy's ``chunk`` entries verbatim), then the final chunk with ``finish_reason``, the usage
chunk when ``stream_options.include_usage`` is set, and ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response

from api.deps import SubmitterDep
from api.generation import answer_or_stream, closing_chunks
from api.prepare import prepare_chat
from api.sse import Event
from inferq import protocol as p
from inferq.openai.chat import ChatCompletionRequest, ChunkFormat

router = APIRouter(tags=["chat"])


@router.post("/chat/completions", summary="Create a chat completion")
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, submit: SubmitterDep
) -> Response:
    entry, job_request = await prepare_chat(body, submit.queue, submit.settings, job=False)
    chunks = partial(_ChatStream, proxy=entry.is_proxy, n=body.n or 1)
    return await answer_or_stream(
        submit, request, p.Endpoint.CHAT, body, (entry, job_request), chunks
    )


class _ChatStream(ChunkFormat):
    """The chunk builder as an :class:`api.sse.StreamFormat`: an upstream proxy's chunks pass
    through verbatim, a local model's deltas are wrapped."""

    output_events = (p.EventType.DELTA, p.EventType.CHUNK)

    def __init__(
        self, job_id: str, model: str, created: int, include_usage: bool, *, proxy: bool, n: int
    ):
        super().__init__(job_id, model, created, include_usage)
        self.proxy = proxy
        self.n = n

    def opening(self) -> Iterable[Event]:
        return [] if self.proxy else [{"data": self.role(i)} for i in range(self.n)]

    def output(self, entry_id: str, event: str, data: bytes) -> Event | None:
        if event == p.EventType.DELTA:
            return {"id": entry_id, "data": self.delta(data)}
        if event == p.EventType.CHUNK:
            return {"id": entry_id, "data": data.decode()}
        return None

    def closing(self, record: dict[str, Any], entry_id: str) -> Iterable[Event]:
        if self.proxy:  # the upstream's own chunks carried the finish and the usage
            return [{"data": "[DONE]"}]
        return closing_chunks(self, record)
