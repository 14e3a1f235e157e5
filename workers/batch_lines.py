"""How a batch part runs its lines, one class per endpoint family.

Each line's ``body`` is checked as the sync route checks it (``prepare``: a bad body becomes
that line's 400 in the error file, never the whole part's), then the valid lines run
**together**: one batcher submission for embeddings and rerank (their texts share forward
passes), every line in the chat scheduler at once for chat (bulk rows of the running batch),
a few concurrent upstream calls for proxy models. ``run`` returns one outcome per line: a
response body, a :class:`ServiceError` (the line failed) or ``None`` (stopped by a cancel or
expiry before it ran: the line is left out of both files, as OpenAI does).
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ValidationError

from api.protocol import (
    ChatCompletionRequest,
    EmbeddingRequest,
    RerankRequest,
    check_chat_for_model,
)
from handlers.base import Cancelled, InvalidInput
from handlers.chat import ChatRequest
from inferq import protocol as p
from inferq.errors import ServiceError, bad_request, model_not_found
from inferq.settings import Settings
from workers.chat import completion_body, generation_params
from workers.embeddings import check_dimensions, embed_texts, embeddings_response
from workers.registry import LoadedModel
from workers.rerank import pairs_of, rerank_response

Outcome = dict[str, Any] | ServiceError | None

PROXY_CONCURRENCY = 8  # upstream calls one part has in flight


def as_service_error(exc: Exception) -> ServiceError:
    """What a line's failure looks like in the error file."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InvalidInput):
        return bad_request(str(exc), param=exc.param, code=exc.code)
    return ServiceError(500, f"{type(exc).__name__}: {exc}", code="internal_error")


def _per_request(requests: list[dict], sizes: list[int], build) -> list[Outcome]:
    """Split one submission's outputs back per request: ``build(request, start, end)``."""
    outcomes: list[Outcome] = []
    at = 0
    for request, size in zip(requests, sizes, strict=True):
        outcomes.append(build(request, at, at + size))
        at += size
    return outcomes


class BatchLines:
    """One endpoint family's lines: ``prepare`` each body, then ``run`` them all together."""

    schema: ClassVar[type[BaseModel]]

    def __init__(self, settings: Settings):
        self.settings = settings

    def parse(self, body: dict[str, Any]) -> BaseModel:
        try:
            parsed = self.schema.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            field_name = str(first["loc"][0]) if first.get("loc") else None
            raise bad_request(f"invalid value: {first['msg']}", param=field_name) from None
        return parsed

    def prepare(self, body: dict[str, Any], model: LoadedModel) -> dict[str, Any]:
        raise NotImplementedError

    def run(
        self, requests: list[dict[str, Any]], model: LoadedModel, stop: threading.Event
    ) -> list[Outcome]:
        raise NotImplementedError


class EmbeddingLines(BatchLines):
    schema = EmbeddingRequest

    def prepare(self, body, model):
        request = self.parse(body).normalized(
            max_inputs=self.settings.max_inputs_per_request,
            max_chars=self.settings.max_input_chars,
        )
        check_dimensions(request, model)
        return {**request, "model": model.name}

    def run(self, requests, model, stop):
        texts = [t for r in requests for t in r["input"]]
        try:
            vectors, lengths = embed_texts(
                model, texts, priority=int(p.Priority.BULK), cancel_event=stop, chunk=len(texts)
            )
        except Cancelled:
            return [None] * len(requests)
        return _per_request(
            requests,
            [len(r["input"]) for r in requests],
            lambda r, a, z: embeddings_response(r, model, vectors[a:z], sum(lengths[a:z])),
        )


class RerankLines(BatchLines):
    schema = RerankRequest

    def prepare(self, body, model):
        request = self.parse(body).normalized(
            max_documents=self.settings.max_rerank_documents,
            max_chars=self.settings.max_input_chars,
        )
        return {**request, "model": model.name}

    def run(self, requests, model, stop):
        pairs = [pair for r in requests for pair in pairs_of(r)]
        lengths = model.handler.token_lengths(pairs)
        future = model.batcher.submit(
            pairs, lengths, priority=int(p.Priority.BULK), cancel_event=stop
        )
        try:
            scores = future.result()
        except Cancelled:
            return [None] * len(requests)
        return _per_request(
            requests,
            [len(r["documents"]) for r in requests],
            lambda r, a, z: rerank_response(
                r, model, scores[a:z], sum(lengths[a:z]), uuid.uuid4().hex
            ),
        )


class ChatLines(BatchLines):
    """Every line of the part enters the model's chat scheduler at bulk priority at once."""

    schema = ChatCompletionRequest

    def prepare(self, body, model):
        parsed = self.parse(body)
        if parsed.stream:
            raise bad_request("streaming is not available in batches", param="stream")
        request = parsed.normalized(max_stop=self.settings.chat_max_stop_sequences)
        check_chat_for_model(
            request,
            model=model.name,
            structured_outputs=model.entry.supports_structured_outputs,
            capabilities=model.info.get("capabilities", []),
            settings=self.settings,
        )
        return {**request, "model": model.name}

    def run(self, requests, model, stop):
        futures: list[Any] = []
        for request in requests:
            try:
                futures.append(self._submit(request, model, stop))
            except Exception as exc:  # e.g. a remote image that cannot be fetched
                futures.append(as_service_error(exc))
        outcomes: list[Outcome] = []
        for future in futures:
            if isinstance(future, ServiceError):
                outcomes.append(future)
                continue
            try:
                result = future.result()
            except Cancelled:
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(as_service_error(exc))
            else:
                completion_id = f"chatcmpl-{uuid.uuid4().hex}"
                outcomes.append(
                    completion_body(completion_id, model.name, int(time.time()), result)
                )
        return outcomes

    def _submit(self, request: dict[str, Any], model: LoadedModel, stop: threading.Event):
        messages = request["messages"]
        if request.get("remote_images"):
            from workers.images import inline_remote_images

            messages = inline_remote_images(messages, self.settings)
        params = generation_params(request, model.handler.generation_defaults, self.settings)
        chat_request = ChatRequest(
            messages=messages,
            cancel_event=stop,
            response_format=request.get("response_format"),
            **params,
        )
        return model.batcher.submit(chat_request, priority=int(p.Priority.BULK))


class ProxyLines(BatchLines):
    """Lines for an upstream proxy model: forwarded as they are, a few at a time."""

    def __init__(self, settings: Settings, endpoint: p.Endpoint):
        super().__init__(settings)
        self.endpoint = endpoint
        self.schema = ChatCompletionRequest if endpoint == p.Endpoint.CHAT else EmbeddingRequest

    def prepare(self, body, model):
        parsed = self.parse(body)
        if self.endpoint == p.Endpoint.CHAT:
            upstream = parsed.upstream_body()
            upstream.pop("stream_options", None)
            return {**upstream, "stream": False}
        from workers.proxy import upstream_embeddings_body

        request = parsed.normalized(
            max_inputs=self.settings.max_inputs_per_request,
            max_chars=self.settings.max_input_chars,
        )
        return upstream_embeddings_body(request)

    def run(self, requests, model, stop):
        from handlers.proxy import UpstreamError
        from workers.proxy import service_error

        call = model.handler.chat if self.endpoint == p.Endpoint.CHAT else model.handler.embeddings

        def forward(body: dict[str, Any]) -> Outcome:
            if stop.is_set():
                return None
            try:
                return orjson.loads(call(body))
            except UpstreamError as exc:
                return service_error(exc)
            except Exception as exc:
                return as_service_error(exc)

        with ThreadPoolExecutor(min(PROXY_CONCURRENCY, len(requests))) as pool:
            return list(pool.map(forward, requests))


LINES: dict[p.Endpoint, type[BatchLines]] = {
    p.Endpoint.EMBEDDINGS: EmbeddingLines,
    p.Endpoint.RERANK: RerankLines,
    p.Endpoint.CHAT: ChatLines,
}


def lines_for(endpoint: p.Endpoint, model: LoadedModel, settings: Settings) -> BatchLines:
    """The line runner of ``endpoint`` on ``model`` (404 if the model does not serve it)."""
    if p.ENDPOINT_CAPABILITY[endpoint] not in model.info["capabilities"]:
        raise model_not_found(model.name)
    if getattr(model.handler, "is_proxy", False):
        if endpoint not in (p.Endpoint.CHAT, p.Endpoint.EMBEDDINGS):
            raise model_not_found(model.name)
        return ProxyLines(settings, endpoint)
    return LINES[endpoint](settings)
