"""All routes, one module per endpoint family, aggregated here."""

from fastapi import APIRouter

from api.routes import (
    audio,
    batches,
    chat,
    completions,
    embeddings,
    events,
    files,
    health,
    jobs,
    models,
    rerank,
)

router = APIRouter()
router.include_router(health.router)
router.include_router(models.router, prefix="/v1")
router.include_router(embeddings.router, prefix="/v1")
router.include_router(jobs.router, prefix="/v1")
router.include_router(events.router, prefix="/v1")
router.include_router(chat.router, prefix="/v1")
router.include_router(completions.router, prefix="/v1")
router.include_router(rerank.router)
router.include_router(files.router, prefix="/v1")
router.include_router(batches.router, prefix="/v1")
router.include_router(audio.router, prefix="/v1")
