"""Wire schemas of the HTTP API (OpenAI-compatible where OpenAI has the route)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inferq.errors import bad_request
from inferq.protocol import Endpoint


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, gt=0)
    user: str | None = None

    def texts(self, *, max_inputs: int, max_chars: int) -> list[str]:
        """The inputs as a list of strings, within the limits, or a 400 naming the problem."""
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        if not items:
            raise bad_request("'input' must not be empty", param="input")
        if not all(isinstance(t, str) for t in items):
            raise bad_request(
                "token arrays are not supported: send 'input' as a string or a list of strings",
                param="input",
                code="unsupported_input",
            )
        if len(items) > max_inputs:
            raise bad_request(
                f"'input' has {len(items)} items; at most {max_inputs} are allowed per request",
                param="input",
                code="too_many_inputs",
            )
        for i, text in enumerate(items):
            if not text:
                raise bad_request(f"input[{i}] is an empty string", param="input")
            if len(text) > max_chars:
                raise bad_request(
                    f"input[{i}] has {len(text)} characters; the limit is {max_chars}",
                    param="input",
                    code="input_too_long",
                )
        return items


class RerankDocument(BaseModel):
    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    query: str
    documents: list[str | RerankDocument]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = True


class JobCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: Endpoint
    body: dict[str, Any]
    metadata: dict[str, str] | None = Field(None, max_length=16)


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


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    capabilities: list[str] = Field(default_factory=list)
    dimensions: int | None = None
    max_input_tokens: int | None = None
    workers: int = 0


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
