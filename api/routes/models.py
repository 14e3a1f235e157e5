"""``GET /v1/models``: the models that have a live worker."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import QueueDep
from inferq.errors import model_not_found, no_live_worker
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
                workers=counts[entry.name],
            )
        )
    return models


@router.get("/models", response_model=ModelList, summary="List served models")
async def list_models(queue: QueueDep, request: Request) -> ModelList:
    return ModelList(data=await _served(queue, request))


@router.get("/models/{model_id:path}", response_model=ModelObject, summary="Get a served model")
async def get_model(model_id: str, queue: QueueDep, request: Request) -> ModelObject:
    entry = queue.entry(model_id)
    for model in await _served(queue, request):
        if model.id == entry.name:
            return model
    raise no_live_worker(entry.name) if entry else model_not_found(model_id)
