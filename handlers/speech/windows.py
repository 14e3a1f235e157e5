"""30 s windows and their timestamp tokens: how one window's output splits into segments."""

from __future__ import annotations

from collections.abc import Sequence

WINDOW_SECONDS = 30
TIME_PRECISION = 0.02  # seconds per timestamp token


def split_timestamped_tokens(
    tokens: Sequence[int], timestamp_begin: int, window_seconds: float
) -> tuple[list[tuple[int, int, float, float]], float]:
    """Split one window's generated tokens into segments, as OpenAI's Whisper does.

    Returns ``[(start_index, end_index, start_s, end_s), ...]`` (indices into ``tokens``,
    times relative to the window) and how far to advance: the whole window when the
    output ends cleanly, else to the last complete segment's end timestamp.
    """
    is_timestamp = [token >= timestamp_begin for token in tokens]

    def seconds(token: int) -> float:
        return min((token - timestamp_begin) * TIME_PRECISION, window_seconds)

    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]]
    single_ending = len(tokens) >= 2 and is_timestamp[-2:] == [False, True]
    if not consecutive:
        timestamps = [t for t, flag in zip(tokens, is_timestamp, strict=True) if flag]
        end = window_seconds
        if timestamps and timestamps[-1] != timestamp_begin:
            end = seconds(timestamps[-1])
        return ([(0, len(tokens), 0.0, end)] if tokens else []), window_seconds
    slices = consecutive + ([len(tokens)] if single_ending else [])
    pieces = []
    last = 0
    for current in slices:
        piece = tokens[last:current]
        start = seconds(piece[0]) if is_timestamp[last] else 0.0
        end_token = piece[-1] if is_timestamp[current - 1] else None
        end = seconds(end_token) if end_token is not None else window_seconds
        pieces.append((last, current, start, max(start, end)))
        last = current
    if single_ending:
        advance = window_seconds
    else:
        advance = seconds(tokens[last - 1])
        if advance <= 0:
            advance = window_seconds
    return pieces, advance


def window_pieces(
    tokens: Sequence[int], timestamp_begin: int, eot: int, window_seconds: float
) -> list[tuple[int, int, float, float]]:
    """All of one independently decoded window's tokens as segments.

    Like :func:`split_timestamped_tokens`, except that an unfinished last segment (text after
    the last timestamp pair) is kept, ending at the window's end: the sequential long-form
    loop would decode it again in the next window, but a window of the batched pipeline has
    no next window, and dropping it loses speech.
    """
    pieces, _ = split_timestamped_tokens(tokens, timestamp_begin, window_seconds)
    covered = pieces[-1][1] if pieces else 0
    tail = [i for i in range(covered, len(tokens)) if tokens[i] < eot]
    if tail:
        start = pieces[-1][3] if pieces else 0.0
        if tokens[covered] >= timestamp_begin:
            start = min((tokens[covered] - timestamp_begin) * TIME_PRECISION, window_seconds)
        pieces.append((covered, len(tokens), start, window_seconds))
    return pieces
