"""OpenAI Batch API (``client.batches``) on the per-model queues."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import FilesDep, OwnerDep
from api.responses import json_response, list_response
from inferq.batches import render_batch
from inferq.openai.common import Metadata, WireRequest

router = APIRouter(tags=["batches"])


class OutputExpiresAfter(BaseModel):
    """When the output and error files expire, as OpenAI bounds it (1 hour to 30 days)."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=30 * 86400)


class BatchCreateRequest(WireRequest):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: Metadata | None = None
    output_expires_after: OutputExpiresAfter | None = None


@router.post("/batches", summary="Create a batch")
async def create_batch(body: BatchCreateRequest, files: FilesDep, owner: OwnerDep):
    batch = await files.create_batch(
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
        output_expires_after=(
            body.output_expires_after.seconds if body.output_expires_after else None
        ),
        owner=owner,
    )
    return json_response(batch)


@router.get("/batches", summary="List batches, newest first")
async def list_batches(
    files: FilesDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
):
    return list_response(await files.list_batches(owner, limit=limit, after=after), render_batch)


@router.get("/batches/{batch_id}", summary="Get a batch")
async def get_batch(batch_id: str, files: FilesDep, owner: OwnerDep):
    return json_response(render_batch(await files.batch(batch_id, owner)))


@router.post("/batches/{batch_id}/cancel", summary="Cancel a batch")
async def cancel_batch(batch_id: str, files: FilesDep, owner: OwnerDep):
    return json_response(render_batch(await files.cancel_batch(batch_id, owner)))
