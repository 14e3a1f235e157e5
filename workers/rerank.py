"""Serving ``/v1/rerank``: (query, document) pairs through the model's batcher."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from handlers.rerank import rank
from inferq import protocol as p
from inferq.openai.rerank import RerankJob, rerank_body
from workers.batching import batch_inputs
from workers.jobs import JobContext

if TYPE_CHECKING:  # the registry imports the serving modules
    from workers.loaded import LoadedModel


def submit(
    pairs: list[tuple[str, str]],
    model: LoadedModel,
    *,
    priority: int,
    cancel_event: threading.Event,
) -> tuple[Future, list[int]]:
    """Queue ``pairs`` in the model's batcher; the future gives their scores."""
    rows, lengths = batch_inputs(model.handler, pairs)
    future = model.batcher.submit(rows, lengths, priority=priority, cancel_event=cancel_event)
    return future, lengths


def rerank_response(job: RerankJob, scores, total_tokens: int, job_id: str) -> dict:
    """The response body (``id`` from ``job_id``, as a chat completion's)."""
    ranked = [(r.index, r.relevance_score) for r in rank(scores, job.top_n)]
    return rerank_body(job, ranked, total_tokens, job_id.removeprefix("job_"))


def serve_rerank(ctx: JobContext, model: LoadedModel) -> bytes:
    """The request was validated by the API: ``documents`` is a non-empty list of strings."""
    job = RerankJob.parse(ctx.request)
    future, lengths = submit(
        job.pairs(), model, priority=ctx.priority, cancel_event=ctx.cancel_event
    )
    return p.dumps(rerank_response(job, ctx.wait(future), sum(lengths), ctx.job_id))
