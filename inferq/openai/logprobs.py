"""Logprobs in OpenAI's two formats, from the compact entries a worker records per token.

An entry is ``[token, logprob, bytes_or_None, [[token, logprob, bytes_or_None], ...]]``
(``bytes`` None: the UTF-8 of ``token``); see ``handlers/chat/logprobs.py``. Entries travel
that way on a job's event stream (``"logprobs"`` of a ``delta`` entry) and are expanded here:
by the worker for a whole answer, by the API for each streamed chunk.
"""

from __future__ import annotations

from typing import Any

Entry = list[Any]


def _bytes(token: str, raw: list[int] | None) -> list[int]:
    return raw if raw is not None else list(token.encode("utf-8"))


def _logprob(value: Any) -> float:
    # -inf (a token the model rules out entirely) is JSON-encoded by OpenAI as -9999.0
    return -9999.0 if value is None or value == float("-inf") else value


def chat_content(entries: list[Entry]) -> list[dict[str, Any]]:
    """``choices[i].logprobs.content`` of a chat completion (or chunk)."""
    return [
        {
            "token": token,
            "logprob": _logprob(logprob),
            "bytes": _bytes(token, raw),
            "top_logprobs": [
                {"token": t, "logprob": _logprob(lp), "bytes": _bytes(t, b)} for t, lp, b in top
            ],
        }
        for token, logprob, raw, top in entries
    ]


def chat_logprobs(entries: list[Entry] | None) -> dict[str, Any] | None:
    """``choices[i].logprobs`` (None when logprobs were not asked for)."""
    if entries is None:
        return None
    return {"content": chat_content(entries), "refusal": None}


def completion_logprobs(
    entries: list[Entry], offset: int = 0, prompt: list[Entry] | None = None
) -> dict[str, Any]:
    """``choices[i].logprobs`` of a text completion: ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (a dict per token; the chosen token is always in it, as in OpenAI's) and
    ``text_offset`` (each token's character offset in the choice's text, from ``offset``).
    ``prompt`` entries (``echo``) come first; the first prompt token has no logprob."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for index, (token, logprob, _raw, alternatives) in enumerate([*(prompt or []), *entries]):
        tokens.append(token)
        offsets.append(offset)
        offset += len(token)
        if prompt and index == 0:
            token_logprobs.append(None)
            top.append(None)
            continue
        token_logprobs.append(_logprob(logprob))
        ranked = {t: _logprob(lp) for t, lp, _ in alternatives}
        ranked.setdefault(token, _logprob(logprob))
        top.append(ranked)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }
