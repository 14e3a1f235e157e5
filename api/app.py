"""``create_app()``: the FastAPI front door. It never imports torch or transformers."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.middleware import RequestIdMiddleware
from api.queue import JobQueue
from api.routes import router
from inferq.catalog import load_catalog
from inferq.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    catalog = load_catalog(settings.model_config_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue = JobQueue(settings, catalog)
        app.state.queue = queue
        await queue.start()
        log.info("API ready: %d catalog models, Redis at %s", len(catalog), settings.redis_url)
        try:
            yield
        finally:
            await queue.stop()

    app = FastAPI(
        title="inferq",
        summary="OpenAI-compatible inference on a Celery + Redis job queue.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.started_at = time.time()
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    app.include_router(router)
    return app
