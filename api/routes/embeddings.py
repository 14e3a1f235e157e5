"""``POST /v1/embeddings`` (OpenAI-compatible)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import SubmitterDep
from api.prepare import prepare_embeddings
from inferq.openai.embeddings import EmbeddingRequest
from inferq.protocol import Endpoint

router = APIRouter(tags=["embeddings"])


@router.post("/embeddings", summary="Create embeddings")
async def create_embeddings(body: EmbeddingRequest, submit: SubmitterDep) -> Response:
    entry, request = await prepare_embeddings(body, submit.queue, submit.settings, job=False)
    return await submit.answer(Endpoint.EMBEDDINGS, entry, request)
