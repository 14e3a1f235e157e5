"""``POST /v1/chat/completions``: the request, the job request a worker gets, and the
``chat.completion`` / ``chat.completion.chunk`` bodies."""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from inferq import protocol as p
from inferq.errors import bad_request
from inferq.images import remote_image_problem
from inferq.openai.common import COUNT_MAX, INT64_MAX, INT64_MIN, JobRequest, WireRequest, usage
from inferq.openai.logprobs import chat_logprobs
from inferq.openai.sampling import SamplingExtensions, refuse_unknown_fields
from inferq.openai.tools import check_tools_for_model, normalized_tools, tool_history_message
from inferq.settings import Settings

# The error code of a response_format the model cannot follow (OpenAI's code for a parameter
# the model does not support); handlers raise it as InvalidInput(code=...).
STRUCTURED_OUTPUTS_UNSUPPORTED = "unsupported_parameter"


class ChatJob(JobRequest, SamplingExtensions):
    """What a local chat model's worker gets: messages reduced to ``role`` and ``content``
    (a string or text/image_url parts), unsupported options already refused."""

    messages: list[dict[str, Any]]
    created: int = 0
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    n: int = 1
    logprobs: int | None = None  # None: none; k: each token's logprob and its top k
    remote_images: bool = False  # some image_url is http(s): the worker fetches it
    # Tool calling (inferq.openai.tools): checked tools, tool_choice (auto when tools are sent).
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True


class ProxyChatJob(JobRequest):
    """What an upstream proxy model's worker gets: the body as the client sent it."""

    created: int = 0
    upstream_body: dict[str, Any]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ChatCompletionRequest(WireRequest, SamplingExtensions):
    """``POST /v1/chat/completions``. Unknown fields are kept (proxy models forward them); a
    local model refuses those neither served nor documented (:mod:`.sampling`)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=COUNT_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=COUNT_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    n: int | None = Field(None, ge=1, le=128)
    user: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def upstream_body(self) -> dict[str, Any]:
        """What a proxy model forwards: the body as the client sent it."""
        return self.model_dump(exclude_unset=True, mode="json")

    def proxied(self, *, model: str, created: int) -> ProxyChatJob:
        """The job request for upstream proxy model ``model``."""
        return ProxyChatJob(model=model, created=created, upstream_body=self.upstream_body())

    def normalized(self, *, max_stop: int) -> ChatJob:
        """The job request for a local model (``model`` as the client named it, ``created``
        unset), or a 400 naming the problem."""
        refuse_unknown_fields(self.model_extra)
        for legacy in ("functions", "function_call"):
            if self.model_extra.get(legacy):
                raise bad_request(
                    f"'{legacy}' is deprecated: send tools and tool_choice",
                    param=legacy,
                    code="unsupported_parameter",
                )
        tools, tool_choice = normalized_tools(self.tools, self.tool_choice)
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs set to true", param="top_logprobs")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > max_stop or not all(stop):
            raise bad_request(f"'stop' takes at most {max_stop} non-empty strings", param="stop")
        token_biases(self.logit_bias)  # keys checked here, read again by the worker
        kind = (self.response_format or {}).get("type", "text")
        if kind not in ("text", "json_object", "json_schema"):
            raise bad_request(
                f"unknown response_format type '{kind}' (text, json_object or json_schema)",
                param="response_format",
            )
        if kind == "json_schema":
            spec = self.response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise bad_request(
                    "response_format.json_schema.schema must be a JSON schema object",
                    param="response_format",
                )
        return ChatJob(
            model=self.model,
            messages=[_chat_message(i, m) for i, m in enumerate(self.messages)],
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop or None,
            seed=self.seed,
            logit_bias=self.logit_bias or None,
            response_format=self.response_format if kind != "text" else None,
            user=self.user,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=self.parallel_tool_calls is not False,
            n=self.n or 1,
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            **self.sampling_extensions(),
        )


TOKEN_ID = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit() accepts "²"


def token_biases(logit_bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's ``logit_bias`` (JSON keys are token ids as strings) as token id -> bias, or a
    400. The one check of its keys: the API runs it on the request, the worker to convert."""
    if not logit_bias:
        return None
    biases = {}
    for key, bias in logit_bias.items():
        if not TOKEN_ID.fullmatch(key):
            raise bad_request(
                f"logit_bias keys must be token ids (decimal digits), got {key!r}",
                param="logit_bias",
            )
        biases[int(key)] = float(bias)
    return biases


def structured_outputs_unsupported(model: str):
    """The 400 for a response_format sent to a model without structured outputs."""
    return bad_request(
        f"model '{model}' does not support structured outputs (response_format)",
        param="response_format",
        code=STRUCTURED_OUTPUTS_UNSUPPORTED,
    )


def image_urls(messages: list[dict[str, Any]]) -> list[str]:
    """The image URLs of normalized chat messages."""
    return [
        part["image_url"]["url"]
        for message in messages
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]


def check_chat_for_model(
    job: ChatJob,
    *,
    model: str,
    structured_outputs: bool,
    capabilities: list[str],
    settings: Settings,
    tool_parser: str | None = None,
) -> None:
    """A normalized chat request against what its local model can do (400 naming the field);
    marks requests whose images the worker has to fetch (``remote_images``)."""
    if job.response_format and not structured_outputs:
        raise structured_outputs_unsupported(model)
    check_tools_for_model(job, model=model, tool_parser=tool_parser, constrained=structured_outputs)
    urls = image_urls(job.messages)
    if not urls:
        return
    if "vision" not in capabilities:
        raise bad_request(
            f"model '{model}' does not accept images", param="messages", code="no_vision"
        )
    for url in urls:
        if problem := remote_image_problem(url, settings):
            raise bad_request(problem, param="messages", code="invalid_image_url")
    job.remote_images = any(not url.startswith("data:") for url in urls)


def _chat_message(index: int, message: dict[str, Any]) -> dict[str, Any]:
    """One message reduced to ``role`` and ``content`` (a string or text/image_url parts)."""
    where = f"messages[{index}]"
    role = message.get("role")
    if not isinstance(role, str):
        raise bad_request(f"{where}: role must be a string (got {role!r})", param="messages")
    if role == "function" or message.get("function_call"):
        raise bad_request(
            f"{where}: function messages are deprecated: use role 'tool' and tool_calls",
            param="messages",
            code="unsupported_parameter",
        )
    if role == "tool" or message.get("tool_calls"):
        return tool_history_message(where, message)
    if role not in CHAT_ROLES:
        raise bad_request(
            f"{where}: role must be one of system, developer, user, assistant (got {role!r})",
            param="messages",
        )
    content = message.get("content")
    if isinstance(content, str):
        return {"role": CHAT_ROLES[role], "content": content}
    if not isinstance(content, list) or not content:
        raise bad_request(
            f"{where}: content must be a string or a non-empty list of parts", param="messages"
        )
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise bad_request(f"{where}: image_url needs a url", param="messages")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise bad_request(
                f"{where}: content parts must be text or image_url (got {kind!r})",
                param="messages",
            )
    return {"role": CHAT_ROLES[role], "content": parts}


# --- response bodies --------------------------------------------------------------------------


def completion_body(
    job_id: str,
    model: str,
    created: int,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` object; its ``id`` is the job's (``chatcmpl-...``). With
    ``tool_calls``, ``content`` is the text before them or null."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message.update(content=text or None, tool_calls=tool_calls)
    return {
        "id": p.completion_id(job_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


class ChunkFormat:
    """``chat.completion.chunk`` JSON, built around the stored deltas without re-encoding."""

    def __init__(self, job_id: str, model: str, created: int, include_usage: bool):
        self.include_usage = include_usage
        head = {
            "id": p.completion_id(job_id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self._prefix = orjson.dumps(head)[:-1] + b',"choices":[{"index":0,"delta":'
        self._suffix = b',"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}' if include_usage else b"}"
        )
        self._head = head

    def delta(self, data: bytes) -> str:
        """A chunk whose delta is ``data`` (the stored ``{"content": ...}`` JSON); a delta of
        choice ``index`` > 0 or one carrying ``logprobs`` entries is rebuilt."""
        if b'"index"' not in data and b'"logprobs"' not in data:
            return (self._prefix + data + self._suffix).decode()
        delta = orjson.loads(data)
        index = delta.pop("index", 0)
        entries = delta.pop("logprobs", None)
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": chat_logprobs(entries),
            "finish_reason": None,
        }
        extra = {"usage": None} if self.include_usage else {}
        return orjson.dumps({**self._head, "choices": [choice], **extra}).decode()

    def role(self, index: int = 0) -> str:
        if index:
            return self.delta(b'{"role":"assistant","content":"","index":%d}' % index)
        return self.delta(b'{"role":"assistant","content":""}')

    def finish(self, finish_reason: str, index: int = 0) -> str:
        choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
        extra = {"usage": None} if self.include_usage else {}
        return orjson.dumps({**self._head, "choices": [choice], **extra}).decode()

    def usage(self, usage: dict[str, Any]) -> str:
        return orjson.dumps({**self._head, "choices": [], "usage": usage}).decode()
