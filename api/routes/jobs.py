"""The job API: submit any endpoint's request as a polled job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import OwnerDep, QueueDep, RequestIdDep, SettingsDep
from api.routes import audio, chat, embeddings, rerank
from api.routes.results import json_response, list_response, render_job
from inferq.errors import ServiceError, bad_request
from inferq.openai.jobs import JobCreateRequest, JobList, JobObject
from inferq.protocol import Endpoint, JobKind

router = APIRouter(tags=["jobs"])

# How each endpoint family validates a job body: (body, queue, settings) -> (entry, request).
JOB_PREPARERS = {
    Endpoint.EMBEDDINGS: embeddings.prepare_job,
    Endpoint.RERANK: rerank.prepare_job,
    Endpoint.CHAT: chat.prepare_job,
    Endpoint.AUDIO_TRANSCRIPTIONS: audio.prepare_job,  # 400: use the multipart job route
    Endpoint.AUDIO_TRANSLATIONS: audio.prepare_job,
}


def job_not_found(job_id: str) -> ServiceError:
    return ServiceError(
        404, f"no job '{job_id}' (unknown or expired)", param="job_id", code="job_not_found"
    )


@router.post("/jobs", status_code=202, response_model=JobObject, summary="Submit a job")
async def create_job(
    body: JobCreateRequest,
    queue: QueueDep,
    settings: SettingsDep,
    owner: OwnerDep,
    request_id: RequestIdDep,
) -> Response:
    prepare_job = JOB_PREPARERS.get(body.endpoint)
    if prepare_job is None:
        raise bad_request(f"endpoint {body.endpoint} cannot run as a job", param="endpoint")
    entry, request = await prepare_job(body.body, queue, settings)
    job_id = await queue.submit(
        endpoint=body.endpoint,
        entry=entry,
        request=request,
        kind=JobKind.JOB,
        owner=owner,
        request_id=request_id,
        metadata=body.metadata,
    )
    record = await queue.read(job_id)
    return json_response(render_job(record), status_code=202)


@router.get("/jobs", response_model=JobList, summary="List jobs, newest first")
async def list_jobs(
    queue: QueueDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> Response:
    records, has_more = await queue.list(owner, limit=limit, after=after)
    data = [render_job(r) for r in records]
    return list_response(data, has_more)


@router.get("/jobs/{job_id}", response_model=JobObject, summary="Get a job")
async def get_job(job_id: str, queue: QueueDep, owner: OwnerDep) -> Response:
    record = await queue.get(job_id, owner)
    if record is None:
        raise job_not_found(job_id)
    return json_response(render_job(record))


@router.post("/jobs/{job_id}/cancel", response_model=JobObject, summary="Cancel a job")
async def cancel_job(job_id: str, queue: QueueDep, owner: OwnerDep) -> Response:
    if await queue.get(job_id, owner) is None:
        raise job_not_found(job_id)
    await queue.cancel(job_id)
    record = await queue.read(job_id)
    if record is None:
        raise job_not_found(job_id)
    return json_response(render_job(record))
