"""Where a long file is cut into parts: groups of the handler's windows (planned once for
the whole file), else, for a handler that does not plan windows, ranges of about
``AUDIO_CHUNK_SEC`` ending at pauses."""

from __future__ import annotations

import itertools
from pathlib import Path

from handlers.base import InvalidInput
from handlers.speech.audio import audio_duration, chunk_ranges, decode_audio, find_split_points

SPLIT_RATE = 8000  # sampling rate of the windows searched for pauses
TAIL_SLACK_SEC = 60.0  # the last part reads this far past the header's duration (VBR files)


def split_window(chunk_s: float) -> float:
    return min(10.0, chunk_s / 6)


def plan_ranges(path: str | Path, duration: float, chunk_s: float) -> list[tuple[float, float]]:
    """Ranges of about ``chunk_s`` seconds covering ``[0, duration]``, each cut in the quietest
    stretch within ``split_window(chunk_s)`` of its target (a small window is decoded at
    8 kHz around each target: the whole file is never decoded here)."""
    window = split_window(chunk_s)
    if duration <= chunk_s + window:
        return [(0.0, duration)]
    cuts: list[float] = []
    previous = 0.0
    while duration - previous > chunk_s + window:
        target = previous + chunk_s
        cut = target
        try:
            clip = decode_audio(path, SPLIT_RATE, start=target - window, end=target + window)
        except InvalidInput:
            clip = None
        if clip is not None:
            found = find_split_points(clip, SPLIT_RATE, window, search_window_s=window - 0.05)
            if found:
                cut = target - window + found[0]
        cuts.append(round(cut, 3))
        previous = cut
    return chunk_ranges(duration, cuts)


def group_windows(
    windows: list[tuple[float, float]], duration: float, chunk_s: float
) -> tuple[list[tuple[float, float]], list[list[tuple[float, float]]]]:
    """Consecutive ``windows`` (seconds, in order, not overlapping) grouped into parts of at
    most ``chunk_s`` seconds from the start of their first window to the end of their last
    (a part holds one window at least): ``(ranges, windows_of_each_part)``.

    The ranges cover ``[0, end]`` end to end (``end``: ``duration``, or the last window's
    end if later), each cut in the middle of the pause between two parts' windows, so each
    range holds its part's windows whole (progress counts seconds of the file) and no
    window lies across two ranges. No window (silence): one part, the whole file, none."""
    end = max([duration, *(w[1] for w in windows)])
    if not windows:
        return [(0.0, end)], [[]]
    groups: list[list[tuple[float, float]]] = [[windows[0]]]
    for window in windows[1:]:
        if window[1] - groups[-1][0][0] <= chunk_s:
            groups[-1].append(window)
        else:
            groups.append([window])
    cuts = [(before[-1][1] + after[0][0]) / 2 for before, after in itertools.pairwise(groups)]
    bounds = [0.0, *cuts, end]
    return list(itertools.pairwise(bounds)), groups


def probe_duration(path: Path) -> float:
    try:
        duration = audio_duration(path)
    except InvalidInput:
        raise
    except Exception as exc:  # FFmpeg errors while demuxing a damaged file
        raise InvalidInput(
            f"could not read audio: {exc}", param="file", code="invalid_audio"
        ) from exc
    if not duration or duration <= 0:
        raise InvalidInput("the audio contains no samples", param="file", code="invalid_audio")
    return float(duration)
