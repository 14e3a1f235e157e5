"""``create_app()``: the FastAPI front door. It never imports torch or transformers."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.auth import APIKeyMiddleware
from api.errors import install_error_handlers
from api.files import UPLOAD_OVERHEAD, FilesAndBatches
from api.metrics import Metrics, MetricsMiddleware
from api.metrics import router as metrics_router
from api.middleware import DeclaredSizeLimit, RequestIdMiddleware
from api.queue import JobQueue
from api.routes import router
from inferq.catalog import load_catalog
from inferq.redisconn import describe
from inferq.settings import Settings, get_settings

log = logging.getLogger(__name__)

# JSON routes bounded by MAX_BODY_BYTES (chat, files and audio uploads have limits of their own)
JSON_BODY_PATHS = (
    *("/v1/jobs", "/v1/embeddings", "/v1/completions", "/v1/batches"),
    *("/v1/rerank", "/v2/rerank", "/rerank"),
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    catalog = load_catalog(settings.model_config_path)
    api_keys = settings.accepted_api_keys()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue = JobQueue(settings, catalog)
        app.state.queue = queue
        app.state.files = FilesAndBatches(queue)
        await queue.start()
        log.info("API ready: %d catalog models, Redis at %s", len(catalog), describe(settings))
        if api_keys:
            log.info("API keys required on /v1 routes (%d keys configured)", len(api_keys))
        else:
            log.warning("no API_KEYS configured: the API is open to anyone who can reach it")
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
    app.state.metrics = Metrics()
    install_error_handlers(app)  # its catch-all middleware is the innermost
    # Outermost last: request id, then metrics (which see 401s too), then auth.
    app.add_middleware(
        DeclaredSizeLimit,
        limits={
            "/v1/files": (settings.max_file_bytes + UPLOAD_OVERHEAD, "file", "file_too_large"),
            "/v1/chat/completions": (settings.max_chat_body_bytes, None, "request_too_large"),
            **{
                path: (settings.max_body_bytes, None, "request_too_large")
                for path in JSON_BODY_PATHS
            },
        },
    )
    app.add_middleware(APIKeyMiddleware, keys=api_keys)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(router)
    app.include_router(metrics_router)
    return app
