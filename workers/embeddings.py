"""Serving ``/v1/embeddings``: texts through the model's batcher, an OpenAI response out."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np

from handlers.base import Cancelled
from inferq import protocol as p
from inferq.errors import bad_request
from workers.jobs import JobContext
from workers.registry import LoadedModel


def token_lengths(handler, texts: list[str]) -> list[int]:
    if hasattr(handler, "token_lengths"):
        return handler.token_lengths(texts)
    return [handler.count_tokens([t]) for t in texts]


def check_dimensions(request: dict[str, Any], model: LoadedModel) -> None:
    dimensions, dim = request.get("dimensions"), model.handler.dim
    if dimensions is not None and dimensions > dim:
        raise bad_request(
            f"dimensions={dimensions} exceeds the {dim} dimensions of '{model.name}'",
            param="dimensions",
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
) -> tuple[np.ndarray, list[int]]:
    """Vectors and token counts for ``texts``, handed to the batcher ``chunk`` at a time."""
    vectors = np.empty((len(texts), model.handler.dim), dtype=np.float32)
    lengths: list[int] = []
    for start in range(0, len(texts), chunk):
        if start and is_cancelled():
            raise Cancelled()
        part = texts[start : start + chunk]
        part_lengths = token_lengths(model.handler, part)
        lengths += part_lengths
        future = model.batcher.submit(
            part, part_lengths, priority=priority, cancel_event=cancel_event
        )
        vectors[start : start + len(part)] = future.result()
        if on_chunk is not None:
            on_chunk(start + len(part))
    return vectors, lengths


def embeddings_response(
    request: dict[str, Any], model: LoadedModel, vectors: np.ndarray, prompt_tokens: int
) -> dict[str, Any]:
    """The OpenAI response body, with ``dimensions`` and ``encoding_format`` applied."""
    dimensions = request.get("dimensions")
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = vectors[:, :dimensions]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    encoding = request["encoding_format"]
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v, encoding)}
            for i, v in enumerate(vectors)
        ],
        "model": model.name,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def serve_embeddings(ctx: JobContext, model: LoadedModel) -> bytes:
    """The request was validated by the API: ``input`` is a list of non-empty strings."""
    texts: list[str] = ctx.request["input"]
    check_dimensions(ctx.request, model)

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
    )
    return p.dumps(embeddings_response(ctx.request, model, vectors, sum(lengths)))


def encode(vector: np.ndarray, encoding_format: str):
    """``float``: a JSON array; ``base64``: little-endian float32 bytes, as OpenAI sends them."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector
