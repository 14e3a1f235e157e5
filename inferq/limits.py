"""How much chat text a request may carry, checked before anything tokenises it.

Tokenising is the costly part of refusing an over-long prompt (a 50 MB message took 88 s
to reach its 400 in the worker, and the model's other requests waited). No token of a
tokenizer is longer than ``CHARS_PER_TOKEN_BOUND`` characters in practice (GPT-2's longest,
runs of ``=``, have 64; natural text averages about 4), so text longer than the model's
context times that can never fit and is refused at once, in the API and again in the worker
(batch lines, and requests sent before a model's context was known).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inferq.errors import ServiceError

CHARS_PER_TOKEN_BOUND = 64
FALLBACK_CHAT_CHARS = 4_000_000  # the limit when the model's context is unknown


def message_chars(messages: Iterable[dict[str, Any]]) -> int:
    """Characters of text in chat messages (string contents and ``text`` parts; images are
    bounded by their own limits)."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total


def chat_char_limit(configured: int, context_length: int | None) -> int:
    """``MAX_CHAT_CHARS`` when set, else the model's context length times the bound (or the
    setting's fallback when the context is unknown)."""
    if configured > 0:
        return configured
    if context_length:
        return int(context_length) * CHARS_PER_TOKEN_BOUND
    return FALLBACK_CHAT_CHARS


def check_chat_chars(messages: Iterable[dict[str, Any]], limit: int) -> None:
    """A 400 ``context_length_exceeded`` when the messages hold more than ``limit``
    characters of text (counted without tokenising)."""
    chars = message_chars(messages)
    if chars > limit:
        raise ServiceError(
            400,
            f"the messages hold {chars} characters of text, more than this model's context "
            f"can take ({limit} characters at most)",
            param="messages",
            code="context_length_exceeded",
        )
