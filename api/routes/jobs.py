"""The job API: submit any endpoint's request as a polled job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import OwnerDep, QueueDep, SubmitterDep
from api.endpoints import ENDPOINTS
from api.responses import job_not_found, json_response, list_response, render_job
from inferq.errors import bad_request
from inferq.openai.jobs import JobCreateRequest, JobList, JobObject
from inferq.protocol import JobKind

router = APIRouter(tags=["jobs"])


@router.post("/jobs", status_code=202, response_model=JobObject, summary="Submit a job")
async def create_job(body: JobCreateRequest, submit: SubmitterDep) -> Response:
    spec = ENDPOINTS.get(body.endpoint)
    if spec is None:
        raise bad_request(f"endpoint {body.endpoint} cannot run as a job", param="endpoint")
    entry, request = await spec.prepare_job(body.body, submit.queue, submit.settings)
    job_id = await submit.start(
        body.endpoint, entry, request, kind=JobKind.JOB, metadata=body.metadata
    )
    return await submit.accepted(job_id)


@router.get("/jobs", response_model=JobList, summary="List jobs, newest first")
async def list_jobs(
    queue: QueueDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> Response:
    return list_response(await queue.list(owner, limit=limit, after=after), render_job)


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
