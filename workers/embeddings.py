"""Serving ``/v1/embeddings`` jobs: texts through the model's batcher, an OpenAI response out."""

from __future__ import annotations

import base64

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


def serve_embeddings(ctx: JobContext, model: LoadedModel) -> bytes:
    """The request was validated by the API: ``input`` is a list of non-empty strings."""
    request = ctx.request
    texts: list[str] = request["input"]
    dimensions = request.get("dimensions")
    dim = model.handler.dim
    if dimensions is not None and dimensions > dim:
        raise bad_request(
            f"dimensions={dimensions} exceeds the {dim} dimensions of '{model.name}'",
            param="dimensions",
        )

    chunk = ctx.runtime.settings.embed_job_chunk
    vectors = np.empty((len(texts), dim), dtype=np.float32)
    prompt_tokens = 0
    for start in range(0, len(texts), chunk):
        if start and ctx.runtime.is_cancelled(ctx.job_id):
            raise Cancelled()
        part = texts[start : start + chunk]
        lengths = token_lengths(model.handler, part)
        prompt_tokens += sum(lengths)
        future = model.batcher.submit(
            part, lengths, priority=ctx.priority, cancel_event=ctx.cancel_event
        )
        vectors[start : start + len(part)] = future.result()
        if len(texts) > chunk:
            done = start + len(part)
            ctx.report_progress(
                {"completed": done, "total": len(texts), "fraction": round(done / len(texts), 4)}
            )

    if dimensions is not None and dimensions < dim:
        vectors = vectors[:, :dimensions]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    return p.dumps(
        {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": encode(v, request["encoding_format"]),
                }
                for i, v in enumerate(vectors)
            ],
            "model": model.name,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


def encode(vector: np.ndarray, encoding_format: str):
    """``float``: a JSON array; ``base64``: little-endian float32 bytes, as OpenAI sends them."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector
