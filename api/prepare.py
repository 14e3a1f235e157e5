"""Preparers: a validated JSON body turned into the request its job carries.

Each checks the body against the limits and the serving model and returns ``(entry, the
request the worker gets)``; ``job`` says whether it came through the job API (``POST
/v1/jobs``), which allows more inputs. The sync routes and :mod:`api.endpoints` both use them.
The audio routes take a multipart form instead (:mod:`api.audio_form`).
"""

from __future__ import annotations

import time
from typing import Any

from api.queue import JobQueue
from inferq import protocol as p
from inferq.catalog import ModelEntry
from inferq.errors import bad_request
from inferq.limits import chat_char_limit, check_chat_chars
from inferq.openai.chat import ChatCompletionRequest, check_chat_for_model
from inferq.openai.completions import CompletionRequest
from inferq.openai.embeddings import EmbeddingRequest, check_dimensions
from inferq.openai.rerank import RerankRequest
from inferq.settings import Settings

Prepared = tuple[ModelEntry, dict[str, Any]]


async def prepare_embeddings(
    body: EmbeddingRequest, queue: JobQueue, settings: Settings, *, job: bool
) -> Prepared:
    max_inputs = settings.max_job_inputs if job else settings.max_inputs_per_request
    request = body.normalized(max_inputs=max_inputs, max_chars=settings.max_input_chars)
    entry = await queue.require_served(body.model, p.Endpoint.EMBEDDINGS)
    if not entry.is_proxy:  # an upstream decides for its own models
        info = (await queue.model_infos(cached=True)).get(entry.name, {})
        check_dimensions(
            request.dimensions,
            model=entry.name,
            matryoshka=entry.matryoshka_dimensions,
            full=info.get("dimensions"),
        )
    return entry, {**request.wire(), "model": entry.name}


async def prepare_rerank(
    body: RerankRequest, queue: JobQueue, settings: Settings, *, job: bool
) -> Prepared:
    request = body.normalized(
        max_documents=settings.max_rerank_documents, max_chars=settings.max_input_chars
    )
    entry = await queue.require_served(body.model, p.Endpoint.RERANK)
    return entry, {**request.wire(), "model": entry.name}


async def prepare_chat(
    body: ChatCompletionRequest, queue: JobQueue, settings: Settings, *, job: bool
) -> Prepared:
    """A job's chat request streams its text on ``/events``, like a streamed sync request."""
    entry = await queue.require_served(body.model, p.Endpoint.CHAT)
    created = int(time.time())
    if entry.is_proxy:
        return entry, body.proxied(model=entry.name, created=created).wire()
    request = body.normalized(max_stop=settings.chat_max_stop_sequences)
    request.model, request.created = entry.name, created
    info = (await queue.model_infos(cached=True)).get(entry.name, {})
    # far too much text for the model's context: refused here, never tokenised
    check_chat_chars(
        request.messages, chat_char_limit(settings.max_chat_chars, info.get("context_length"))
    )
    check_chat_for_model(
        request,
        model=entry.name,
        structured_outputs=entry.structured_outputs(info),
        tool_parser=entry.tool_parser,
        capabilities=info.get("capabilities", []),
        settings=settings,
    )
    return entry, request.wire()


async def prepare_completions(
    body: CompletionRequest, queue: JobQueue, settings: Settings, *, job: bool
) -> Prepared:
    """A text completion: an upstream proxy gets the body as it came (not streamed)."""
    entry = await queue.require_served(body.model, p.Endpoint.COMPLETIONS)
    created = int(time.time())
    if entry.is_proxy:
        if body.stream:
            raise bad_request(
                "streamed /v1/completions are not forwarded to upstream models",
                param="stream",
                code="unsupported_value",
            )
        forwarded = {"model": entry.name, "created": created, "upstream_body": body.upstream_body()}
        return entry, forwarded
    request = body.normalized(max_stop=settings.chat_max_stop_sequences)
    request.model, request.created = entry.name, created
    return entry, request.wire()
