"""``POST /v1/embeddings``: the request, the job request the worker gets, the response."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from inferq.errors import bad_request
from inferq.openai.common import COUNT_MAX, JobRequest, WireRequest, usage

EncodingFormat = Literal["float", "base64"]


class EmbeddingJob(JobRequest):
    """What an embeddings worker gets: ``input`` is a non-empty list of non-empty strings."""

    input: list[str]
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None

    def upstream_body(self) -> dict[str, Any]:
        """What goes to an upstream proxy model."""
        body: dict[str, Any] = {"input": self.input, "encoding_format": self.encoding_format}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body


class EmbeddingRequest(WireRequest):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = Field(None, gt=0, le=COUNT_MAX)
    user: str | None = None

    def texts(self, *, max_inputs: int, max_chars: int) -> list[str]:
        """The inputs as a list of strings, within the limits, or a 400 naming the problem."""
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        if not items:
            raise bad_request("'input' must not be empty", param="input")
        if not all(isinstance(t, str) for t in items):
            raise bad_request(
                "token arrays are not supported: send 'input' as a string or a list of strings "
                "(LangChain's OpenAIEmbeddings sends token arrays by default: construct it with "
                "check_embedding_ctx_length=False)",
                param="input",
                code="unsupported_input",
            )
        if len(items) > max_inputs:
            raise bad_request(
                f"'input' has {len(items)} items; at most {max_inputs} are allowed per request",
                param="input",
                code="too_many_inputs",
            )
        for i, text in enumerate(items):
            if not text:
                raise bad_request(f"input[{i}] is an empty string", param="input")
            if len(text) > max_chars:
                raise bad_request(
                    f"input[{i}] has {len(text)} characters; the limit is {max_chars}",
                    param="input",
                    code="input_too_long",
                )
        return items

    def normalized(self, *, max_inputs: int, max_chars: int) -> EmbeddingJob:
        """The job request (``model`` still as the client named it)."""
        return EmbeddingJob(
            model=self.model,
            input=self.texts(max_inputs=max_inputs, max_chars=max_chars),
            encoding_format=self.encoding_format,
            dimensions=self.dimensions,
        )


def check_dimensions(
    dimensions: int | None, *, model: str, matryoshka: list[int] | None, full: int | None
) -> None:
    """``dimensions`` is served only by a model trained for truncation (its catalog entry's
    ``matryoshka_dimensions``), from its smallest trained size up to ``full`` (the model's
    size, when known); asking a model for its own size is always fine. Else a 400."""
    if dimensions is None or dimensions == full:
        return
    if full is not None and dimensions > full:
        raise bad_request(
            f"dimensions={dimensions} exceeds the {full} dimensions of '{model}'",
            param="dimensions",
        )
    if not matryoshka:
        raise bad_request(
            f"model '{model}' was not trained for shortened embeddings (Matryoshka), so "
            "'dimensions' is not supported: leave it out"
            + (f" or send dimensions={full}" if full else ""),
            param="dimensions",
            code="unsupported_parameter",
        )
    if dimensions < matryoshka[0]:
        raise bad_request(
            f"dimensions={dimensions} is below the smallest size '{model}' was trained for "
            f"({matryoshka[0]})",
            param="dimensions",
        )


def embeddings_body(model: str, embeddings: list[Any], prompt_tokens: int) -> dict[str, Any]:
    """The response: ``embeddings`` already encoded (float arrays or base64 strings)."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": embedding}
            for i, embedding in enumerate(embeddings)
        ],
        "model": model,
        "usage": usage(prompt_tokens),
    }
