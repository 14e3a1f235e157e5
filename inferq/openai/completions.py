"""``POST /v1/completions`` (OpenAI's legacy text completion): the request, the job request a
worker gets, and the ``text_completion`` bodies and stream chunks.

The prompt is used raw (no chat template). A list of prompts gives ``len(prompt) * n``
choices, choice ``i * n + j`` being the ``j``-th completion of prompt ``i`` (OpenAI's order).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import ConfigDict, Field

from inferq.errors import bad_request
from inferq.openai.chat import StreamOptions, token_biases
from inferq.openai.common import COUNT_MAX, INT64_MAX, INT64_MIN, JobRequest, WireRequest, usage
from inferq.openai.logprobs import Entry, completion_logprobs
from inferq.openai.sampling import SamplingExtensions, refuse_unknown_fields

MAX_PROMPTS = 128  # prompts in one request (each prompt times n is a row of the batch)


class CompletionJob(JobRequest, SamplingExtensions):
    """What a local model's worker gets for a text completion."""

    prompts: list[str]
    created: int = 0
    max_tokens: int = 16
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None
    echo: bool = False
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionRequest(WireRequest, SamplingExtensions):
    """``POST /v1/completions``. Unknown fields are kept for upstream proxies; a local model
    refuses those neither served nor documented."""

    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str | list[Any]
    max_tokens: int | None = Field(16, ge=1, le=COUNT_MAX)  # OpenAI's default is 16
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    n: int | None = Field(None, ge=1, le=128)
    best_of: int | None = Field(None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = False
    suffix: str | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def prompts(self) -> list[str]:
        """The prompts as strings, or a 400 (token-id prompts are not served)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt:
            raise bad_request("'prompt' must not be an empty list", param="prompt")
        if not all(isinstance(item, str) for item in self.prompt):
            raise bad_request(
                "prompts must be a string or a list of strings (token-id prompts are not "
                "supported by local models)",
                param="prompt",
                code="unsupported_value",
            )
        return list(self.prompt)

    def normalized(self, *, max_stop: int) -> CompletionJob:
        """The job request for a local model, or a 400 naming the problem."""
        refuse_unknown_fields(self.model_extra)
        prompts = self.prompts()
        if len(prompts) > MAX_PROMPTS:
            raise bad_request(f"at most {MAX_PROMPTS} prompts per request", param="prompt")
        if not all(prompts):
            raise bad_request("prompts must not be empty strings", param="prompt")
        if self.suffix:
            raise bad_request(
                "suffix (insertion) is not supported by local models",
                param="suffix",
                code="unsupported_parameter",
            )
        n = self.n or 1
        if self.best_of not in (None, 1, n):
            raise bad_request(
                "best_of is supported only equal to n (each completion is returned)",
                param="best_of",
                code="unsupported_value",
            )
        if self.echo and self.stream:
            raise bad_request("echo cannot be streamed", param="echo")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > max_stop or not all(stop):
            raise bad_request(f"'stop' takes at most {max_stop} non-empty strings", param="stop")
        token_biases(self.logit_bias)
        return CompletionJob(
            model=self.model,
            prompts=prompts,
            max_tokens=self.max_tokens or 16,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop or None,
            seed=self.seed,
            n=n,
            logprobs=self.logprobs,
            echo=bool(self.echo),
            logit_bias=self.logit_bias or None,
            user=self.user,
            **self.sampling_extensions(),
        )

    def upstream_body(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, mode="json")


def completion_id(job_id: str) -> str:
    return "cmpl-" + job_id.removeprefix("job_")


def choice(
    index: int,
    text: str,
    finish_reason: str | None,
    entries: list[Entry] | None,
    *,
    offset: int = 0,
    prompt_entries: list[Entry] | None = None,
) -> dict[str, Any]:
    """One ``choices[i]`` of a text completion (or chunk)."""
    return {
        "index": index,
        "text": text,
        "logprobs": (
            completion_logprobs(entries, offset, prompt_entries) if entries is not None else None
        ),
        "finish_reason": finish_reason,
    }


def completion_body(
    job_id: str,
    model: str,
    created: int,
    choices: list[dict[str, Any]],
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A ``text_completion`` object; its ``id`` is the job's (``cmpl-...``)."""
    return {
        "id": completion_id(job_id),
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


class CompletionChunks:
    """Streamed ``text_completion`` chunks from a job's ``delta`` entries; keeps each
    choice's text offset (for ``logprobs.text_offset``)."""

    def __init__(self, job_id: str, model: str, created: int, include_usage: bool):
        self.include_usage = include_usage
        self._head = {
            "id": completion_id(job_id),
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self._offsets: dict[int, int] = {}

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        tail = {"usage": None} if self.include_usage else {}
        return orjson.dumps({**self._head, "choices": choices, **tail, **extra}).decode()

    def delta(self, data: bytes) -> str:
        delta = orjson.loads(data)
        index = delta.get("index", 0)
        text = delta.get("content", "")
        entries = delta.get("logprobs")
        offset = self._offsets.get(index, 0)  # as the whole answer counts: by token texts
        self._offsets[index] = offset + sum(len(entry[0]) for entry in entries or [])
        return self._chunk([choice(index, text, None, entries, offset=offset)])

    def finish(self, index: int, finish_reason: str) -> str:
        return self._chunk([choice(index, "", finish_reason, None)])

    def usage(self, usage: dict[str, Any]) -> str:
        return orjson.dumps({**self._head, "choices": [], "usage": usage}).decode()
