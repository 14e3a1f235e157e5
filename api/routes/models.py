"""``GET /v1/models``: the models that have a live worker."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import QueueDep
from inferq.errors import ServiceError, model_not_found
from inferq.openai.models import ModelList, ModelObject

router = APIRouter(tags=["models"])


async def _served(queue, request: Request) -> list[ModelObject]:
    counts = await queue.worker_counts()
    infos = await queue.model_infos()
    created = int(request.app.state.started_at)
    models = []
    for entry in queue.catalog:
        if entry.name not in counts:
            continue
        info = infos.get(entry.name, {})
        models.append(
            ModelObject(
                id=entry.name,
                created=created,
                owned_by=info.get("owned_by", entry.owned_by or "local"),
                capabilities=info.get("capabilities", []),
                dimensions=info.get("dimensions"),
                max_input_tokens=info.get("max_input_tokens"),
                dtype=info.get("dtype"),
                workers=counts[entry.name],
            )
        )
    return models


@router.get("/models", response_model=ModelList, summary="List served models")
async def list_models(queue: QueueDep, request: Request) -> ModelList:
    return ModelList(data=await _served(queue, request))


@router.get("/models/{model_id:path}", response_model=ModelObject, summary="Get a served model")
async def get_model(model_id: str, queue: QueueDep, request: Request) -> ModelObject:
    """A catalog model with no live worker is a 404 here, as OpenAI answers for a model it
    does not serve (the inference routes answer 503 + Retry-After for it instead)."""
    entry = queue.entry(model_id)
    if entry is None:
        raise model_not_found(model_id)
    for model in await _served(queue, request):
        if model.id == entry.name:
            return model
    raise ServiceError(
        404,
        f"The model '{entry.name}' is in the catalog but no worker serving it is running.",
        param="model",
        code="model_not_found",
    )
