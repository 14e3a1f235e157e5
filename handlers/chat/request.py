"""What travels with one chat completion: the request, its validation, its encoded prompt."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from handlers.base import InvalidInput

OnText = Callable[[str], None]


@dataclass
class ChatRequest:
    """One chat completion inside :meth:`generate_batch`. ``temperature`` 0 means greedy."""

    messages: Sequence[dict[str, Any]]
    max_new_tokens: int
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


@dataclass
class EncodedPrompt:
    """One request's prompt, tokenized (and for VL, its images preprocessed)."""

    input_ids: list[int]
    vision: dict[str, torch.Tensor] = field(default_factory=dict)


def validate_request(request: ChatRequest, *, vocab_size: int) -> None:
    """Raise :class:`InvalidInput` naming the first parameter the model cannot take."""
    if not request.messages:
        raise InvalidInput("messages must not be empty", param="messages")
    if request.max_new_tokens is None or request.max_new_tokens < 1:
        raise InvalidInput("max_tokens must be at least 1", param="max_tokens")
    if request.temperature is None or request.temperature < 0:
        raise InvalidInput("temperature must be >= 0", param="temperature")
    if request.top_p is None or not 0 <= request.top_p <= 1:
        raise InvalidInput("top_p must be between 0 and 1", param="top_p")
    if request.stop is not None and not all(isinstance(s, str) for s in request.stop):
        raise InvalidInput("stop must be a list of strings", param="stop")
    for token, bias in (request.logit_bias or {}).items():
        if not 0 <= token < vocab_size:
            raise InvalidInput(
                f"logit_bias names token {token}; this model's token ids are 0 to {vocab_size - 1}",
                param="logit_bias",
            )
        if not -100 <= bias <= 100:
            raise InvalidInput("logit_bias values must be between -100 and 100", param="logit_bias")
