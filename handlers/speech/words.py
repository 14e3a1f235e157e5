"""Word timestamps from per-token times: tokens grouped into words, times kept in the segment.

The token times themselves come from dynamic time warping over cross-attention (transformers'
``return_token_timestamps``); this module only groups and places them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from handlers.base import SpeechSegment, SpeechWord

PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def _is_punctuation(text: str, characters: str) -> bool:
    return bool(text) and all(c in characters for c in text)


def group_words(
    decode: Callable[[list[int]], str], token_ids: Sequence[int], *, split_on_spaces: bool
) -> list[tuple[str, int, int]]:
    """Group text tokens into words: ``[(text, first_token_index, last_token_index)]``.

    Tokens are first merged until they decode to whole characters. With
    ``split_on_spaces`` a word starts at a unit beginning with a space, and punctuation
    attaches to its neighbour as in OpenAI's Whisper; otherwise each unit is a word.
    """
    units: list[tuple[str, int, int]] = []
    pending: list[int] = []
    first = 0
    for index, token in enumerate(token_ids):
        if not pending:
            first = index
        pending.append(token)
        text = decode(pending)
        if "\ufffd" not in text or index == len(token_ids) - 1:
            units.append((text, first, index))
            pending = []
    if not split_on_spaces:
        return [(text.strip(), start, end) for text, start, end in units if text.strip()]
    words: list[list] = []
    for text, start, end in units:
        stripped = text.strip()
        starts_word = text.startswith(" ") and not _is_punctuation(stripped, APPEND_PUNCTUATIONS)
        after_opening = bool(words) and _is_punctuation(words[-1][0].strip(), PREPEND_PUNCTUATIONS)
        if words and (not starts_word or after_opening):
            words[-1][0] += text
            words[-1][2] = end
        else:
            words.append([text, start, end])
    return [(text.strip(), start, end) for text, start, end in words if text.strip()]


def place_words(
    grouped: Sequence[tuple[str, int, int]],
    starts: Sequence[float],
    ends: Sequence[float],
    segment: SpeechSegment,
    window_start: float,
) -> list[SpeechWord]:
    """Absolute word times from window-relative token ``starts``/``ends`` (indexed like the
    grouped tokens): in order, never before the previous word, inside ``segment``."""
    words: list[SpeechWord] = []
    previous_end = segment.start
    for text, first, last in grouped:
        start = min(max(window_start + starts[first], previous_end), segment.end)
        end = min(max(window_start + ends[last], start), segment.end)
        words.append(SpeechWord(word=text, start=round(start, 3), end=round(end, 3)))
        previous_end = end
    return words
