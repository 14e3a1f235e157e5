"""Submitting a prepared request: as a sync job answered with its result, or as a polled job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response

from api.queue import ClientGone, JobQueue
from api.responses import json_response, render_job, sync_response
from inferq import protocol as p
from inferq.catalog import ModelEntry
from inferq.settings import Settings


def client_gone() -> Response:
    """The answer to a client that left: nobody reads it (nginx's "client closed request")."""
    return Response(status_code=499)


@dataclass(frozen=True)
class Submitter:
    """One HTTP request's way onto the queue: who submits, under which request id."""

    queue: JobQueue
    settings: Settings
    owner: str
    request_id: str
    request: Request | None = None  # the HTTP request, watched for a client that leaves

    async def start(
        self,
        endpoint: p.Endpoint,
        entry: ModelEntry,
        request: dict[str, Any],
        *,
        kind: p.JobKind,
        metadata: dict[str, str] | None = None,
        wait: bool = True,
    ) -> str:
        """Submit the job; returns its id (see :meth:`api.queue.JobQueue.submit`)."""
        return await self.queue.submit(
            endpoint=endpoint,
            entry=entry,
            request=request,
            kind=kind,
            owner=self.owner,
            request_id=self.request_id,
            metadata=metadata,
            wait=wait,
        )

    async def answer(
        self, endpoint: p.Endpoint, entry: ModelEntry, request: dict[str, Any]
    ) -> Response:
        """Run it as a sync job: its stored result (or error) is the response."""
        job_id = await self.start(endpoint, entry, request, kind=p.JobKind.SYNC)
        try:
            return sync_response(await self.wait(job_id))
        except ClientGone:
            return client_gone()

    async def wait(self, job_id: str) -> dict[str, Any]:
        """The finished job's record; a client that disconnects meanwhile cancels the job
        (raises :class:`api.queue.ClientGone`), as a streamed request's does."""
        gone = self.request.is_disconnected if self.request is not None else None
        return await self.queue.wait(job_id, self.settings.sync_timeout_sec, gone)

    async def accepted(self, job_id: str) -> Response:
        """``202`` with the job object of a job just submitted."""
        return json_response(render_job(await self.queue.read(job_id)), status_code=202)
