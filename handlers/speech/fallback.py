"""Temperature fallback, OpenAI-style: decode at 0, retry hotter while a window looks degenerate.

A window needs another try when its text compresses too well (repetition loops) or its
tokens are unlikely; a window that is probably silence is accepted (and then skipped).
"""

from __future__ import annotations

import zlib

from handlers.base import InvalidInput

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6


def temperatures(temperature: float | None) -> tuple[float, ...]:
    """The temperatures to try in turn: the fallback ladder for ``None``/0, else exactly one."""
    if temperature is None or temperature == 0:
        return FALLBACK_TEMPERATURES
    if temperature < 0:
        raise InvalidInput("temperature must be >= 0", param="temperature")
    return (float(temperature),)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def is_silence(no_speech_prob: float, avg_logprob: float) -> bool:
    return no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD


def needs_fallback(compression: float, avg_logprob: float, no_speech_prob: float) -> bool:
    """Whether a decoded window should be decoded again at the next temperature."""
    degenerate = compression > COMPRESSION_RATIO_THRESHOLD or avg_logprob < LOGPROB_THRESHOLD
    return degenerate and not is_silence(no_speech_prob, avg_logprob)
