"""``POST /v1/rerank`` (also ``/rerank`` and ``/v2/rerank``): the Jina/vLLM/Cohere shape."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import SubmitterDep
from api.prepare import prepare_rerank
from inferq.openai.rerank import RerankRequest
from inferq.protocol import Endpoint

router = APIRouter(tags=["rerank"])


@router.post("/v1/rerank", summary="Rerank documents by relevance to a query")
@router.post("/v2/rerank", include_in_schema=False)
@router.post("/rerank", include_in_schema=False)
async def create_rerank(body: RerankRequest, submit: SubmitterDep) -> Response:
    entry, request = await prepare_rerank(body, submit.queue, submit.settings, job=False)
    return await submit.answer(Endpoint.RERANK, entry, request)
