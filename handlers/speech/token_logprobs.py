"""OpenAI's transcription ``logprobs`` entries for Whisper tokens: ``{token, logprob, bytes}``.

Whisper's tokenizer is byte-level BPE (GPT-2's): a token's string maps each byte to a printable
character; ``bytes`` are the token's real bytes and ``token`` their UTF-8 text (a character
split across tokens shows as U+FFFD in each ``token``, whole in the joined ``bytes``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any


@functools.cache
def _byte_of() -> dict[str, int]:
    """GPT-2's byte-to-character table, inverted."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    characters = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, characters, strict=True)}


def token_bytes(piece: str) -> bytes:
    """A byte-level BPE token string's bytes (a piece outside the table: its UTF-8)."""
    table = _byte_of()
    if all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    return piece.encode()


def logprob_entries(
    tokenizer, token_ids: Sequence[int], logprobs: Sequence[float]
) -> list[dict[str, Any]]:
    """``{token, logprob, bytes}`` for each token (``logprob`` capped at 0)."""
    entries = []
    for piece, logprob in zip(
        tokenizer.convert_ids_to_tokens(list(token_ids)), logprobs, strict=True
    ):
        raw = token_bytes(piece)
        entries.append(
            {
                "token": raw.decode("utf-8", errors="replace"),
                "logprob": min(0.0, float(logprob)),
                "bytes": list(raw),
            }
        )
    return entries
