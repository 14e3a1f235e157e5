"""``/v1/jobs``: the submit request and the job objects."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inferq.openai.common import Metadata, WireRequest
from inferq.protocol import Endpoint


class JobCreateRequest(WireRequest):
    model_config = ConfigDict(extra="forbid")

    endpoint: Endpoint
    body: dict[str, Any]
    metadata: Metadata | None = None


class JobObject(BaseModel):
    id: str
    object: Literal["job"] = "job"
    endpoint: str
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    progress: dict[str, Any] | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
