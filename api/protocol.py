"""Wire schemas of the HTTP API (OpenAI-compatible where OpenAI has the route)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inferq.errors import bad_request
from inferq.images import remote_image_problem
from inferq.protocol import Endpoint
from inferq.settings import Settings


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, gt=0)
    user: str | None = None

    def texts(self, *, max_inputs: int, max_chars: int) -> list[str]:
        """The inputs as a list of strings, within the limits, or a 400 naming the problem."""
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        if not items:
            raise bad_request("'input' must not be empty", param="input")
        if not all(isinstance(t, str) for t in items):
            raise bad_request(
                "token arrays are not supported: send 'input' as a string or a list of strings",
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

    def normalized(self, *, max_inputs: int, max_chars: int) -> dict[str, Any]:
        """The request as a worker gets it (``model`` still as the client named it)."""
        return {
            "model": self.model,
            "input": self.texts(max_inputs=max_inputs, max_chars=max_chars),
            "encoding_format": self.encoding_format,
            "dimensions": self.dimensions,
        }


class RerankDocument(BaseModel):
    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    query: str
    documents: list[str | RerankDocument]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = True

    def normalized(self, *, max_documents: int, max_chars: int) -> dict[str, Any]:
        """The request as a worker gets it, or a 400 naming the problem."""
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
        return {
            "model": self.model,
            "query": self.query,
            "documents": documents,
            "top_n": self.top_n,
            "return_documents": self.return_documents,
        }


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. Unknown fields are kept (proxy models forward them)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    user: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def upstream_body(self) -> dict[str, Any]:
        """What a proxy model forwards: the body as the client sent it."""
        return self.model_dump(exclude_unset=True, mode="json")

    def normalized(self, *, max_stop: int) -> dict[str, Any]:
        """The request as a local model's worker gets it, or a 400 naming the problem."""
        if self.n not in (None, 1):
            raise bad_request(
                "only n=1 is supported: send n requests for n completions",
                param="n",
                code="unsupported_value",
            )
        if (
            self.tools
            or self.tool_choice not in (None, "none")
            or self.model_extra.get("functions")
        ):
            raise bad_request(
                "tool calling is not supported by local models (only by upstream proxy models)",
                param="tools",
                code="unsupported_parameter",
            )
        if self.logprobs:
            raise bad_request(
                "logprobs are not supported by local models",
                param="logprobs",
                code="unsupported_parameter",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise bad_request(
                    f"{name} is not supported by local models",
                    param=name,
                    code="unsupported_parameter",
                )
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > max_stop or not all(stop):
            raise bad_request(f"'stop' takes at most {max_stop} non-empty strings", param="stop")
        if any(not token.isdigit() for token in self.logit_bias or {}):
            raise bad_request("logit_bias keys must be token ids", param="logit_bias")
        kind = (self.response_format or {}).get("type", "text")
        if kind not in ("text", "json_object", "json_schema"):
            raise bad_request(
                f"unknown response_format type '{kind}' (text, json_object or json_schema)",
                param="response_format",
            )
        if kind == "json_schema":
            spec = self.response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise bad_request(
                    "response_format.json_schema.schema must be a JSON schema object",
                    param="response_format",
                )
        return {
            "model": self.model,
            "messages": [_chat_message(i, m) for i, m in enumerate(self.messages)],
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": stop or None,
            "seed": self.seed,
            "logit_bias": self.logit_bias or None,
            "response_format": self.response_format if kind != "text" else None,
            "user": self.user,
        }


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
    request: dict[str, Any],
    *,
    model: str,
    structured_outputs: bool,
    capabilities: list[str],
    settings: Settings,
) -> None:
    """A normalized chat request against what its local model can do (400 naming the field);
    marks requests whose images the worker has to fetch (``remote_images``)."""
    if request["response_format"] and not structured_outputs:
        raise bad_request(
            f"model '{model}' does not support structured outputs (response_format)",
            param="response_format",
            code="unsupported_parameter",
        )
    urls = image_urls(request["messages"])
    if not urls:
        return
    if "vision" not in capabilities:
        raise bad_request(
            f"model '{model}' does not accept images", param="messages", code="no_vision"
        )
    for url in urls:
        if problem := remote_image_problem(url, settings):
            raise bad_request(problem, param="messages", code="invalid_image_url")
    request["remote_images"] = any(not url.startswith("data:") for url in urls)


def _chat_message(index: int, message: dict[str, Any]) -> dict[str, Any]:
    """One message reduced to ``role`` and ``content`` (a string or text/image_url parts)."""
    where = f"messages[{index}]"
    role = message.get("role")
    if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
        raise bad_request(
            f"{where}: tool messages and tool calls are not supported by local models",
            param="messages",
            code="unsupported_parameter",
        )
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


class JobCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: Endpoint
    body: dict[str, Any]
    metadata: dict[str, str] | None = Field(None, max_length=16)


class JobObject(BaseModel):
    id: str
    object: Literal["job"] = "job"
    endpoint: str
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    progress: dict[str, Any] | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    capabilities: list[str] = Field(default_factory=list)
    dimensions: int | None = None
    max_input_tokens: int | None = None
    workers: int = 0


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
