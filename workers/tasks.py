"""Celery tasks: one per endpoint family, each carrying only a job id."""

from __future__ import annotations

from inferq.protocol import TASK_NAMES, Endpoint
from workers import runtime
from workers.celery_app import app
from workers.embeddings import serve_embeddings
from workers.jobs import JobContext
from workers.rerank import serve_rerank


def _model_of(ctx: JobContext):
    return runtime.registry.get(ctx.request["model"])


@app.task(name=TASK_NAMES[Endpoint.EMBEDDINGS], acks_late=True, reject_on_worker_lost=True)
def embeddings(job_id: str) -> None:
    runtime.jobs.run(job_id, lambda ctx: serve_embeddings(ctx, _model_of(ctx)))


@app.task(name=TASK_NAMES[Endpoint.RERANK], acks_late=True, reject_on_worker_lost=True)
def rerank(job_id: str) -> None:
    runtime.jobs.run(job_id, lambda ctx: serve_rerank(ctx, _model_of(ctx)))
