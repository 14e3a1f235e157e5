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

import orjson
from fastapi import APIRouter, Request, Response

from api.deps import SubmitterDep
from api.prepare import prepare_chat
from inferq.openai.chat import ChatCompletionRequest
from api.sse import Event, stream_response
from inferq import protocol as p

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
    chunks = _ChunkFormat(
        job_id, entry.name, job_request["created"], body.include_usage, proxy=entry.is_proxy
    )
    return await stream_response(
        submit.queue, job_id, request, submit.settings.sync_timeout_sec, chunks
    )


class _ChunkFormat:
    """``chat.completion.chunk`` JSON, built around the stored deltas without re-encoding
    (an :class:`api.sse.StreamFormat`)."""

    output_events = (p.EventType.DELTA, p.EventType.CHUNK)

    def __init__(self, job_id: str, model: str, created: int, include_usage: bool, *, proxy: bool):
        self.include_usage = include_usage
        self.proxy = proxy
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

    def opening(self) -> Iterable[Event]:
        return [] if self.proxy else [{"data": self.role()}]

    def output(self, entry_id: str, event: str, data: bytes) -> Event | None:
        if event == p.EventType.DELTA:
            return {"id": entry_id, "data": self.delta(data)}
        if event == p.EventType.CHUNK:
            return {"id": entry_id, "data": data.decode()}
        return None

    def closing(self, record: dict[str, Any], entry_id: str) -> Iterable[Event]:
        if not self.proxy:
            result = p.loads(record[p.JobField.RESULT])
            yield {"data": self.finish(result["choices"][0]["finish_reason"])}
            if self.include_usage:
                yield {"data": self.usage(result["usage"])}
        yield {"data": "[DONE]"}
