"""Serving ``/v1/rerank``: (query, document) pairs through the model's batcher."""

from __future__ import annotations

from typing import Any

import numpy as np

from handlers.rerank import rank
from inferq import protocol as p
from workers.jobs import JobContext
from workers.registry import LoadedModel


def pairs_of(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(request["query"], document) for document in request["documents"]]


def rerank_response(
    request: dict[str, Any], model: LoadedModel, scores: np.ndarray, total_tokens: int, rid: str
) -> dict[str, Any]:
    documents = request["documents"]
    results = []
    for result in rank(scores, request.get("top_n")):
        item = {"index": result.index, "relevance_score": result.relevance_score}
        if request.get("return_documents", True):
            item["document"] = {"text": documents[result.index]}
        results.append(item)
    return {
        "id": f"rerank-{rid}",
        "model": model.name,
        "results": results,
        "usage": {"total_tokens": total_tokens},
    }


def serve_rerank(ctx: JobContext, model: LoadedModel) -> bytes:
    """The request was validated by the API: ``documents`` is a non-empty list of strings."""
    pairs = pairs_of(ctx.request)
    lengths = model.handler.token_lengths(pairs)
    scores = model.batcher.submit(
        pairs, lengths, priority=ctx.priority, cancel_event=ctx.cancel_event
    ).result()
    rid = ctx.job_id.removeprefix("job_")
    return p.dumps(rerank_response(ctx.request, model, scores, sum(lengths), rid))
