"""Where a long file is cut: ranges of about ``AUDIO_CHUNK_SEC`` ending at pauses."""

from __future__ import annotations

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
