"""Celery tasks: one per endpoint family (each carrying only a job id) and the batch steps."""

from __future__ import annotations

from inferq.audio import TASK_HELP
from inferq.batches import TASK_FINALIZE, TASK_PLAN, TASK_RUNNER
from inferq.protocol import TASK_NAMES, Endpoint
from workers import runtime
from workers.celery_app import app
from workers.chat import serve_chat
from workers.completions import serve_completions
from workers.embeddings import serve_embeddings
from workers.jobs import JobContext
from workers.rerank import serve_rerank


def _model_of(ctx: JobContext):
    return runtime.current().registry.get(ctx.model)


@app.task(name=TASK_NAMES[Endpoint.EMBEDDINGS], acks_late=True, reject_on_worker_lost=True)
def embeddings(*job_ids: str) -> None:
    """One or more job ids (the API coalesces interactive jobs: ``api/publisher.py``)."""
    runtime.current().jobs.run_many(job_ids, lambda ctx: _serve_embeddings(ctx, _model_of(ctx)))


def _serve_embeddings(ctx: JobContext, model) -> bytes:
    if model.upstream:
        from workers.proxy import serve_proxy_embeddings

        return serve_proxy_embeddings(ctx, model)
    return serve_embeddings(ctx, model)


@app.task(name=TASK_NAMES[Endpoint.CHAT], acks_late=True, reject_on_worker_lost=True)
def chat(job_id: str) -> None:
    runtime.current().jobs.run(job_id, lambda ctx: serve_chat(ctx, _model_of(ctx)))


@app.task(name=TASK_NAMES[Endpoint.COMPLETIONS], acks_late=True, reject_on_worker_lost=True)
def completions(job_id: str) -> None:
    runtime.current().jobs.run(job_id, lambda ctx: serve_completions(ctx, _model_of(ctx)))


@app.task(name=TASK_NAMES[Endpoint.RERANK], acks_late=True, reject_on_worker_lost=True)
def rerank(*job_ids: str) -> None:
    runtime.current().jobs.run_many(job_ids, lambda ctx: serve_rerank(ctx, _model_of(ctx)))


@app.task(name=TASK_PLAN, acks_late=True, reject_on_worker_lost=True)
def plan_batch(batch_id: str) -> None:
    runtime.current().batches.plan(batch_id)


@app.task(name=TASK_RUNNER, acks_late=True, reject_on_worker_lost=True)
def run_batch_parts(batch_id: str, model: str, runner_id: str) -> None:
    worker = runtime.current()
    worker.batches.run_runner(batch_id, model, runner_id, worker.registry.models)


@app.task(name=TASK_FINALIZE, acks_late=True, reject_on_worker_lost=True)
def finalize_batch(batch_id: str) -> None:
    runtime.current().batches.finalize(batch_id)


@app.task(
    name=TASK_NAMES[Endpoint.AUDIO_TRANSCRIPTIONS], acks_late=True, reject_on_worker_lost=True
)
def audio_transcriptions(job_id: str) -> None:
    runtime.current().audio.run_job(job_id)


@app.task(name=TASK_NAMES[Endpoint.AUDIO_TRANSLATIONS], acks_late=True, reject_on_worker_lost=True)
def audio_translations(job_id: str) -> None:
    runtime.current().audio.run_job(job_id)


@app.task(name=TASK_HELP, acks_late=True, reject_on_worker_lost=True)
def audio_part(job_id: str) -> None:
    """Take parts of a long audio job (see workers/audio/)."""
    runtime.current().audio.help_with(job_id)
