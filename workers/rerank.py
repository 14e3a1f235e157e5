"""Serving ``/v1/rerank`` jobs: (query, document) pairs through the model's batcher."""

from __future__ import annotations

from handlers.rerank import rank
from inferq import protocol as p
from workers.jobs import JobContext
from workers.registry import LoadedModel


def serve_rerank(ctx: JobContext, model: LoadedModel) -> bytes:
    """The request was validated by the API: ``documents`` is a non-empty list of strings."""
    request = ctx.request
    documents: list[str] = request["documents"]
    pairs = [(request["query"], document) for document in documents]
    lengths = model.handler.token_lengths(pairs)
    scores = model.batcher.submit(
        pairs, lengths, priority=ctx.priority, cancel_event=ctx.cancel_event
    ).result()
    results = []
    for result in rank(scores, request.get("top_n")):
        item = {"index": result.index, "relevance_score": result.relevance_score}
        if request.get("return_documents", True):
            item["document"] = {"text": documents[result.index]}
        results.append(item)
    return p.dumps(
        {
            "id": f"rerank-{ctx.job_id.removeprefix('job_')}",
            "model": model.name,
            "results": results,
            "usage": {"total_tokens": sum(lengths)},
        }
    )
