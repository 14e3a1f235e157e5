"""``POST /v1/rerank`` (also ``/rerank`` and ``/v2/rerank``): the Jina/vLLM/Cohere shape."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.deps import OwnerDep, QueueDep, RequestIdDep, SettingsDep
from api.queue import JobQueue
from api.routes.results import parse_body, sync_response
from inferq.openai.rerank import RerankRequest
from inferq.protocol import Endpoint, JobKind
from inferq.settings import Settings

router = APIRouter(tags=["rerank"])


async def prepare(body: RerankRequest, queue: JobQueue, settings: Settings):
    """Validate against limits and the serving model; returns (entry, normalized request)."""
    request = body.normalized(
        max_documents=settings.max_rerank_documents, max_chars=settings.max_input_chars
    )
    entry = await queue.require_served(body.model, Endpoint.RERANK)
    return entry, {**request.wire(), "model": entry.name}


async def prepare_job(body: dict[str, Any], queue: JobQueue, settings: Settings):
    return await prepare(parse_body(RerankRequest, body), queue, settings)


@router.post("/v1/rerank", summary="Rerank documents by relevance to a query")
@router.post("/v2/rerank", include_in_schema=False)
@router.post("/rerank", include_in_schema=False)
async def create_rerank(
    body: RerankRequest,
    queue: QueueDep,
    settings: SettingsDep,
    owner: OwnerDep,
    request_id: RequestIdDep,
) -> Response:
    entry, request = await prepare(body, queue, settings)
    job_id = await queue.submit(
        endpoint=Endpoint.RERANK,
        entry=entry,
        request=request,
        kind=JobKind.SYNC,
        owner=owner,
        request_id=request_id,
    )
    return sync_response(await queue.wait(job_id, settings.sync_timeout_sec))
