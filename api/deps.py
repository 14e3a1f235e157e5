"""Dependencies injected into routes (``Annotated`` aliases).

Every one is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a
thread hop (and an event-loop wake-up) each, five of them per sync request before this
changed; these only read attributes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.auth import ANONYMOUS_OWNER
from api.files import FilesAndBatches
from api.queue import JobQueue
from api.submit import Submitter
from inferq.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


async def get_files(request: Request) -> FilesAndBatches:
    return request.app.state.files


async def get_request_id(request: Request) -> str:
    return request.state.request_id


async def get_owner(request: Request) -> str:
    """Who owns the jobs this request creates or reads (an API key's id once auth is on)."""
    return getattr(request.state, "owner", ANONYMOUS_OWNER)


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
FilesDep = Annotated[FilesAndBatches, Depends(get_files)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
OwnerDep = Annotated[str, Depends(get_owner)]


async def get_submitter(
    request: Request,
    queue: QueueDep,
    settings: SettingsDep,
    owner: OwnerDep,
    request_id: RequestIdDep,
) -> Submitter:
    return Submitter(queue, settings, owner, request_id, request)


SubmitterDep = Annotated[Submitter, Depends(get_submitter)]
