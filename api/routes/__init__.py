"""All routes, one module per endpoint family, aggregated here."""

from fastapi import APIRouter

from api.routes import embeddings, health, jobs, models, rerank

router = APIRouter()
router.include_router(health.router)
router.include_router(models.router, prefix="/v1")
router.include_router(embeddings.router, prefix="/v1")
router.include_router(jobs.router, prefix="/v1")
router.include_router(rerank.router)
