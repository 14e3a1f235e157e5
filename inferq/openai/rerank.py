"""``POST /v1/rerank`` (Cohere/Jina style): the request, the job request, the response."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from inferq.errors import bad_request
from inferq.openai.common import COUNT_MAX, JobRequest, WireRequest


class RerankJob(JobRequest):
    """What a rerank worker gets: a non-empty query and a non-empty list of documents."""

    query: str
    documents: list[str]
    top_n: int | None = None
    return_documents: bool = True

    def pairs(self) -> list[tuple[str, str]]:
        """(query, document) pairs, in document order."""
        return [(self.query, document) for document in self.documents]


class RerankDocument(BaseModel):
    text: str


class RerankRequest(WireRequest):
    model_config = ConfigDict(extra="ignore")

    model: str
    query: str
    documents: list[str | RerankDocument]
    top_n: int | None = Field(None, ge=1, le=COUNT_MAX)
    return_documents: bool = True

    def normalized(self, *, max_documents: int, max_chars: int) -> RerankJob:
        """The job request (``model`` as the client named it), or a 400 naming the problem."""
        if not self.query:
            raise bad_request("'query' must not be empty", param="query")
        documents = [d if isinstance(d, str) else d.text for d in self.documents]
        if not documents:
            raise bad_request("'documents' must not be empty", param="documents")
        if len(documents) > max_documents:
            raise bad_request(
                f"'documents' has {len(documents)} items; at most {max_documents} "
                "are allowed per request",
                param="documents",
                code="too_many_documents",
            )
        for i, text in enumerate([self.query, *documents]):
            if len(text) > max_chars:
                where = "query" if i == 0 else f"documents[{i - 1}]"
                raise bad_request(
                    f"{where} has {len(text)} characters; the limit is {max_chars}",
                    param="query" if i == 0 else "documents",
                    code="input_too_long",
                )
        return RerankJob(
            model=self.model,
            query=self.query,
            documents=documents,
            top_n=self.top_n,
            return_documents=self.return_documents,
        )


def rerank_body(
    job: RerankJob, ranked: Iterable[tuple[int, float]], total_tokens: int, rid: str
) -> dict[str, Any]:
    """The response for ``ranked`` (document index, relevance score), best first."""
    results = []
    for index, score in ranked:
        item: dict[str, Any] = {"index": index, "relevance_score": score}
        if job.return_documents:
            item["document"] = {"text": job.documents[index]}
        results.append(item)
    return {
        "id": f"rerank-{rid}",
        "model": job.model,
        "results": results,
        "usage": {"total_tokens": total_tokens},
    }
