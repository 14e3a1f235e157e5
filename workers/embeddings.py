"""Serving ``/v1/embeddings``: texts through the model's batcher, an OpenAI response out."""

from __future__ import annotations

import base64
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np

from handlers.base import Cancelled
from inferq import protocol as p
from inferq.openai import embeddings as contract
from inferq.openai.embeddings import EmbeddingJob, embeddings_body
from workers.batching import batch_inputs
from workers.jobs import JobContext

if TYPE_CHECKING:  # the registry imports the serving modules
    from workers.loaded import LoadedModel


def check_dimensions(job: EmbeddingJob, model: LoadedModel) -> None:
    """``dimensions`` only for a Matryoshka model, within its sizes (else a 400)."""
    contract.check_dimensions(
        job.dimensions,
        model=model.name,
        matryoshka=model.entry.matryoshka_dimensions,
        full=model.handler.dim,
    )


def embed_texts(
    model: LoadedModel,
    texts: list[str],
    *,
    priority: int,
    cancel_event,
    chunk: int,
    is_cancelled: Callable[[], bool] = lambda: False,
    on_chunk: Callable[[int], None] | None = None,
    wait: Callable[[Future], Any] = Future.result,
) -> tuple[np.ndarray, list[int]]:
    """Vectors and token counts for ``texts``, handed to the batcher ``chunk`` at a time
    (``wait`` gives a submission's result: a job's watches for a missed cancel)."""
    vectors = np.empty((len(texts), model.handler.dim), dtype=np.float32)
    lengths: list[int] = []
    for start in range(0, len(texts), chunk):
        if start and is_cancelled():
            raise Cancelled()
        part, part_lengths = batch_inputs(model.handler, texts[start : start + chunk])
        lengths += part_lengths
        future = model.batcher.submit(
            part, part_lengths, priority=priority, cancel_event=cancel_event
        )
        vectors[start : start + len(part)] = wait(future)
        if on_chunk is not None:
            on_chunk(start + len(part))
    return vectors, lengths


def embeddings_response(
    job: EmbeddingJob, model: LoadedModel, vectors: np.ndarray, prompt_tokens: int
) -> dict[str, Any]:
    """The response body, with ``dimensions`` (truncated, re-normalised) and
    ``encoding_format`` applied."""
    if job.dimensions is not None and job.dimensions < vectors.shape[1]:
        vectors = vectors[:, : job.dimensions]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    embeddings = [encode(v, job.encoding_format) for v in vectors]
    return embeddings_body(model.name, embeddings, prompt_tokens)


def serve_embeddings(ctx: JobContext, model: LoadedModel) -> bytes:
    """The request was validated by the API: ``input`` is a list of non-empty strings."""
    job = EmbeddingJob.parse(ctx.request)
    texts = job.input
    check_dimensions(job, model)

    def progress(done: int) -> None:
        ctx.report_progress(
            {"completed": done, "total": len(texts), "fraction": round(done / len(texts), 4)}
        )

    chunk = ctx.runtime.settings.embed_job_chunk
    vectors, lengths = embed_texts(
        model,
        texts,
        priority=ctx.priority,
        cancel_event=ctx.cancel_event,
        chunk=chunk,
        is_cancelled=ctx.is_cancelled,
        on_chunk=progress if len(texts) > chunk else None,
        wait=ctx.wait,
    )
    return p.dumps(embeddings_response(job, model, vectors, sum(lengths)))


def encode(vector: np.ndarray, encoding_format: str):
    """``float``: a JSON array; ``base64``: little-endian float32 bytes, as OpenAI sends them."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector
