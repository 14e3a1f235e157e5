"""``GET /v1/models``: the model objects."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    capabilities: list[str] = Field(default_factory=list)
    dimensions: int | None = None
    max_input_tokens: int | None = None
    dtype: str | None = Field(
        None, description="What the weights compute in on the serving workers (e.g. bfloat16)."
    )
    workers: int = 0


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
