"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import QueueDep
from api.responses import json_response

router = APIRouter(tags=["health"])


@router.get("/health", summary="The process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Redis answers; which models have workers")
async def ready(queue: QueueDep) -> Response:
    try:
        await queue.redis.ping()
        counts = await queue.worker_counts()
    except Exception as exc:  # any Redis failure means not ready
        return json_response({"status": "unavailable", "redis": str(exc), "models": {}}, 503)
    return json_response({"status": "ready", "redis": "ok", "models": counts})
