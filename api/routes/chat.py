"""``POST /v1/chat/completions`` (OpenAI-compatible), plain or streamed (SSE).

A streamed completion is relayed from the job's event stream by :mod:`api.sse`: each ``delta``
as a ``chat.completion.chunk`` (an upstream proxy's ``chunk`` entries verbatim), then the final
chunk with ``finish_reason``, the usage chunk when ``stream_options.include_usage`` is set, and
``data: [DONE]``. The job id is in ``X-Job-ID``; if the client disconnects, the job is
cancelled and the worker drops it within one decoding step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request, Response

from api.deps import SubmitterDep
from api.prepare import prepare_chat
from api.sse import Event, stream_response
from inferq import protocol as p
from inferq.openai.chat import ChatCompletionRequest, ChunkFormat

router = APIRouter(tags=["chat"])


@router.post("/chat/completions", summary="Create a chat completion")
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, submit: SubmitterDep
) -> Response:
    entry, job_request = await prepare_chat(body, submit.queue, submit.settings, job=False)
    if not body.stream:
        return await submit.answer(p.Endpoint.CHAT, entry, job_request)
    job_id = await submit.start(
        p.Endpoint.CHAT, entry, job_request, kind=p.JobKind.SYNC, wait=False
    )
    chunks = _ChatStream(
        job_id,
        entry.name,
        job_request["created"],
        body.include_usage,
        proxy=entry.is_proxy,
        n=body.n or 1,
    )
    return await stream_response(
        submit.queue, job_id, request, submit.settings.sync_timeout_sec, chunks
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
        if not self.proxy:
            result = p.loads(record[p.JobField.RESULT])
            for choice in result["choices"]:
                yield {"data": self.finish(choice["finish_reason"], choice["index"])}
            if self.include_usage:
                yield {"data": self.usage(result["usage"])}
        yield {"data": "[DONE]"}
