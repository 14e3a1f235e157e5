"""What travels with one chat completion: the request, its validation, its encoded prompt."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from handlers.base import InvalidInput

# ``on_text(delta)``; with ``logprobs`` requested, ``on_text(delta, entries)`` where
# ``entries`` are the compact logprobs of the tokens behind ``delta`` (see .logprobs).
OnText = Callable[..., None]


@dataclass
class ChatRequest:
    """One chat completion inside :meth:`generate_batch`. ``temperature`` 0 means greedy."""

    messages: Sequence[dict[str, Any]]
    max_new_tokens: int
    # max_new_tokens is the client's own max_tokens: a prompt plus it past the context is
    # refused (context_length_exceeded, as vLLM and OpenAI answer); else it is a default, cut
    # to what the context leaves after the prompt.
    strict_max_tokens: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    cancel_event: threading.Event | None = None
    on_text: OnText | None = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit (OpenAI's)
    # Tool calling (see handlers.chat.tools): OpenAI ``tools`` entries, ``tool_choice``
    # (none | auto | required | {"type": "function", "function": {"name": ...}}).
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    on_tool_calls: Callable[[list[dict[str, Any]]], None] | None = None
    # Sampling extensions (OpenAI's penalties; vLLM's top_k, min_p, repetition_penalty).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    top_k: int = 0  # 0 (or -1): all tokens
    min_p: float = 0.0
    # None: no logprobs; k >= 0: each token's logprob and the k most likely alternatives.
    logprobs: int | None = None
    # A raw prompt (``/v1/completions``): tokenized as it is, no chat template; ``messages``
    # is then ignored.
    prompt: str | None = None
    # With ``logprobs``: also the prompt tokens' logprobs (``echo``; the first has none).
    prompt_logprobs: bool = False


@dataclass
class EncodedPrompt:
    """One request's prompt, tokenized (and for VL, its images preprocessed)."""

    input_ids: list[int]
    vision: dict[str, torch.Tensor] = field(default_factory=dict)


def validate_request(request: ChatRequest, *, vocab_size: int) -> None:
    """Raise :class:`InvalidInput` naming the first parameter the model cannot take."""
    if request.prompt is None and not request.messages:
        raise InvalidInput("messages must not be empty", param="messages")
    if request.max_new_tokens is None or request.max_new_tokens < 1:
        raise InvalidInput("max_tokens must be at least 1", param="max_tokens")
    if request.temperature is None or request.temperature < 0:
        raise InvalidInput("temperature must be >= 0", param="temperature")
    if request.top_p is None or not 0 <= request.top_p <= 1:
        raise InvalidInput("top_p must be between 0 and 1", param="top_p")
    if request.stop is not None and not all(isinstance(s, str) for s in request.stop):
        raise InvalidInput("stop must be a list of strings", param="stop")
    _validate_extensions(request)
    for token, bias in (request.logit_bias or {}).items():
        if not 0 <= token < vocab_size:
            raise InvalidInput(
                f"logit_bias names token {token}; this model's token ids are 0 to {vocab_size - 1}",
                param="logit_bias",
            )
        if not -100 <= bias <= 100:
            raise InvalidInput("logit_bias values must be between -100 and 100", param="logit_bias")


def _validate_extensions(request: ChatRequest) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if not -2 <= getattr(request, name) <= 2:
            raise InvalidInput(f"{name} must be between -2 and 2", param=name)
    if not 0 < request.repetition_penalty <= 2:
        raise InvalidInput("repetition_penalty must be in (0, 2]", param="repetition_penalty")
    if request.top_k < -1:
        raise InvalidInput("top_k must be -1, 0 (all tokens) or a positive count", param="top_k")
    if not 0 <= request.min_p <= 1:
        raise InvalidInput("min_p must be between 0 and 1", param="min_p")
    if request.logprobs is not None and not 0 <= request.logprobs <= 20:
        raise InvalidInput("top_logprobs must be between 0 and 20", param="top_logprobs")


def completion_budget(request: ChatRequest, prompt_tokens: int, context_length: int) -> int:
    """The most tokens ``request`` may generate after its prompt of ``prompt_tokens`` tokens,
    or :class:`InvalidInput` ``context_length_exceeded`` in vLLM's words: the prompt leaves no
    room, or (``strict_max_tokens``) the prompt plus ``max_tokens`` is past the context."""
    what = "messages" if request.prompt is None else "prompt"
    wanted = request.max_new_tokens
    if request.strict_max_tokens and prompt_tokens + wanted > context_length:
        raise InvalidInput(
            f"This model's maximum context length is {context_length} tokens. However, you "
            f"requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the {what}, "
            f"{wanted} in the completion). Please reduce the length of the {what} or completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if prompt_tokens >= context_length:
        raise InvalidInput(
            f"This model's maximum context length is {context_length} tokens. However, your "
            f"{what} resulted in {prompt_tokens} tokens. Please reduce the length of the {what}.",
            param=what,
            code="context_length_exceeded",
        )
    return min(wanted, context_length - prompt_tokens)
