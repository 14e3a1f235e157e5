"""``POST /v1/embeddings`` (OpenAI-compatible)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.deps import OwnerDep, QueueDep, RequestIdDep, SettingsDep
from api.queue import JobQueue
from api.routes.results import parse_body, sync_response
from inferq.openai.embeddings import EmbeddingRequest
from inferq.protocol import Endpoint, JobKind
from inferq.settings import Settings

router = APIRouter(tags=["embeddings"])


async def prepare(
    body: EmbeddingRequest, queue: JobQueue, settings: Settings, *, max_inputs: int
) -> tuple[Any, dict[str, Any]]:
    """Validate against limits and the serving model; returns (entry, normalized request)."""
    request = body.normalized(max_inputs=max_inputs, max_chars=settings.max_input_chars)
    entry = await queue.require_served(body.model, Endpoint.EMBEDDINGS)
    return entry, {**request.wire(), "model": entry.name}


async def prepare_job(body: dict[str, Any], queue: JobQueue, settings: Settings):
    """The same request submitted through ``POST /v1/jobs`` (higher input limit)."""
    parsed = parse_body(EmbeddingRequest, body)
    return await prepare(parsed, queue, settings, max_inputs=settings.max_job_inputs)


@router.post("/embeddings", summary="Create embeddings")
async def create_embeddings(
    body: EmbeddingRequest,
    queue: QueueDep,
    settings: SettingsDep,
    owner: OwnerDep,
    request_id: RequestIdDep,
) -> Response:
    entry, request = await prepare(
        body, queue, settings, max_inputs=settings.max_inputs_per_request
    )
    job_id = await queue.submit(
        endpoint=Endpoint.EMBEDDINGS,
        entry=entry,
        request=request,
        kind=JobKind.SYNC,
        owner=owner,
        request_id=request_id,
    )
    record = await queue.wait(job_id, settings.sync_timeout_sec)
    return sync_response(record)
