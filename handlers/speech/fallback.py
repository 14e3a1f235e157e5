"""Temperature fallback, OpenAI-style: decode at 0, retry hotter while a window looks degenerate.

A window needs another try when its tokens are unlikely; a window that is probably silence is
accepted (and then skipped).
"""

from __future__ import annotations

import zlib

from handlers.base import InvalidInput

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
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


def more_likely(avg_logprob: float, than: float) -> bool:
    """Whether a window's new result (``avg_logprob``) replaces the one it kept (``than``):
    of a window's tries, the most likely is kept."""
    return avg_logprob > than


def needs_retry(avg_logprob: float, no_speech_prob: float) -> bool:
    """Whether a window of the batched pipeline is decoded again, hotter: only for unlikely
    tokens. Not for a high compression ratio: a window holds speech only and is decoded
    without previous text, so repetition in it is what was said (a sentence said five times
    in 30 s compresses past the threshold, and a hotter decode of it is worse)."""
    return avg_logprob < LOGPROB_THRESHOLD and not is_silence(no_speech_prob, avg_logprob)
