"""Upstream proxy models: an OpenAI-compatible server (OpenAI, vLLM, ...) behind a catalog entry.

Entry keys: ``upstream_base_url`` (``https://host/v1``), ``upstream_api_key_env`` (the name of
the environment variable holding the key, read when the worker loads the model),
``upstream_model`` (the upstream's id; defaults to ``hf_repo_id``) and ``skip_download``.
``options: {timeout: 60, connect_timeout: 5}`` tune the HTTP client.

The request body is forwarded with ``model`` replaced by the upstream id; everything else
(tools, ``n``, ``response_format``, ...) passes through untouched, and so does the answer:
a non-streamed body as the upstream sent it, a stream chunk by chunk (``on_chunk`` gets each
``data:`` payload verbatim). Upstream failures raise :class:`UpstreamError` (with the
upstream's message) or :class:`UpstreamTimeout`. No GPU, no weights: these handlers only talk
HTTP (httpx), so one worker can serve many of them concurrently (``thread_safe``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx

from handlers.base import Cancelled, Family

# Upstream client errors that are the caller's fault keep their status; the rest become 502.
PASS_THROUGH_STATUSES = {400: 400, 404: 404, 413: 413, 422: 400, 429: 429}


class UpstreamError(Exception):
    """The upstream failed or refused; ``status`` is what our client should get."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class UpstreamTimeout(UpstreamError):
    def __init__(self, message: str):
        super().__init__(504, message)


def _upstream_message(response: httpx.Response) -> str:
    """The upstream's error message (OpenAI error object, else the start of the body)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return response.text[:500]


class _OpenAIProxy:
    capabilities: ClassVar[list[str]] = []
    upstream: ClassVar[bool] = True  # handlers.base.UpstreamChatModel / UpstreamEmbeddingModel
    thread_safe = True
    max_parallelism = 64
    owned_by = "upstream"

    def __init__(
        self,
        source: str | Path,
        device: Any = None,
        cache_dir: str | None = None,
        *,
        name: str | None = None,
        hf_repo_id: str | None = None,
        upstream_base_url: str | None = None,
        upstream_api_key_env: str | None = None,
        upstream_model: str | None = None,
        defaults: dict[str, Any] | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        **_entry: Any,
    ):
        self.name = name or hf_repo_id or str(source)
        if not upstream_base_url:
            raise ValueError(f"model '{self.name}': a proxy entry needs upstream_base_url")
        headers = {}
        if upstream_api_key_env:
            key = os.environ.get(upstream_api_key_env)
            if not key:
                raise ValueError(
                    f"model '{self.name}': the environment variable {upstream_api_key_env} "
                    "(upstream_api_key_env) is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        self.device = "upstream"
        self.base_url = upstream_base_url.rstrip("/")
        self.upstream_model = upstream_model or hf_repo_id or self.name
        self.generation_defaults = dict(defaults or {})
        self.client = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=self.max_parallelism),
        )

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "model": self.upstream_model}

    def _post(self, path: str, body: dict[str, Any]) -> bytes:
        """POST a JSON body; the upstream's JSON answer, as bytes."""
        try:
            response = self.client.post(path, json=self._body(body))
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"the upstream did not answer in time ({exc!r})") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(502, f"cannot reach the upstream: {exc!r}") from exc
        self._raise_for_status(response)
        try:
            json.loads(response.content)
        except ValueError as exc:
            raise UpstreamError(502, "the upstream answered with invalid JSON") from exc
        return response.content

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        status = PASS_THROUGH_STATUSES.get(response.status_code, 502)
        raise UpstreamError(
            status, f"upstream error {response.status_code}: {_upstream_message(response)}"
        )

    def close(self) -> None:
        self.client.close()


class OpenAIChatProxyModel(_OpenAIProxy):
    """``/v1/chat/completions`` (and ``/v1/completions``, not streamed) forwarded to an
    OpenAI-compatible upstream."""

    family: ClassVar[Family] = Family.CHAT
    capabilities: ClassVar[list[str]] = ["chat-completion", "text-completion"]

    def completions(self, body: dict[str, Any]) -> bytes:
        """The upstream's ``text_completion`` (JSON bytes) for a body sent as it came."""
        return self._post("completions", {**body, "stream": False})

    def chat(
        self,
        body: dict[str, Any],
        *,
        on_chunk: Callable[[str], None] | None = None,
        cancel_event: threading.Event | None = None,
    ) -> bytes:
        """The upstream's ``chat.completion`` (JSON bytes). With ``stream: true`` in the body,
        each chunk's JSON goes to ``on_chunk`` as it arrives and the chunks are merged into the
        returned completion. Raises :class:`Cancelled` between chunks once cancelled."""
        if not body.get("stream"):
            return self._post("chat/completions", body)
        merged = _ChunkMerger()
        try:
            with self.client.stream("POST", "chat/completions", json=self._body(body)) as response:
                self._raise_for_status(response)
                for line in response.iter_lines():
                    if cancel_event is not None and cancel_event.is_set():
                        raise Cancelled()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise UpstreamError(502, "the upstream sent an invalid chunk") from exc
                    if isinstance(chunk, dict) and chunk.get("error"):
                        error = chunk["error"]
                        message = error.get("message") if isinstance(error, dict) else error
                        raise UpstreamError(502, f"upstream error: {message}")
                    if on_chunk is not None:
                        on_chunk(data)
                    merged.add(chunk)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"the upstream stopped answering ({exc!r})") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(502, f"cannot reach the upstream: {exc!r}") from exc
        return json.dumps(merged.completion()).encode()


class OpenAIEmbeddingProxyModel(_OpenAIProxy):
    """``/v1/embeddings`` forwarded to an OpenAI-compatible upstream."""

    family: ClassVar[Family] = Family.EMBEDDINGS
    capabilities: ClassVar[list[str]] = ["text-embedding"]

    def embeddings(self, body: dict[str, Any]) -> bytes:
        return self._post("embeddings", body)


class _ChunkMerger:
    """Folds ``chat.completion.chunk`` objects into one ``chat.completion``."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(key) is not None:
                self.head[key] = chunk[key]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            merged = self.choices.setdefault(
                index,
                {
                    "index": index,
                    "message": {"role": "assistant", "content": None},
                    "logprobs": None,
                    "finish_reason": None,
                },
            )
            delta = choice.get("delta") or {}
            message = merged["message"]
            if delta.get("role"):
                message["role"] = delta["role"]
            if delta.get("content") is not None:
                message["content"] = (message["content"] or "") + delta["content"]
            for call in delta.get("tool_calls") or []:
                calls = message.setdefault("tool_calls", [])
                position = call.get("index", len(calls))
                while len(calls) <= position:
                    calls.append(
                        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                    )
                target = calls[position]
                if call.get("id"):
                    target["id"] = call["id"]
                function = call.get("function") or {}
                target["function"]["name"] += function.get("name") or ""
                target["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                merged["finish_reason"] = choice["finish_reason"]

    def completion(self) -> dict[str, Any]:
        return {
            "id": self.head.get("id"),
            "object": "chat.completion",
            "created": self.head.get("created"),
            "model": self.head.get("model"),
            "system_fingerprint": self.head.get("system_fingerprint"),
            "choices": [self.choices[i] for i in sorted(self.choices)],
            "usage": self.usage,
        }
