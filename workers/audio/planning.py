"""Where a long file is cut into parts: groups of the handler's windows (planned once for
the whole file), else, for a handler that does not plan windows, ranges of about
``AUDIO_CHUNK_SEC`` ending at pauses."""

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


Part = tuple[tuple[float, float], list[tuple[float, float]]]  # (range, its windows)


class PartPlanner:
    """Consecutive windows (seconds, in order, not overlapping), given as the VAD finds them,
    grouped into parts of at most ``chunk_s`` seconds from the start of their first window to
    the end of their last (a part holds one window at least).

    ``add`` returns the parts that are final (a later window cannot join them) as
    ``(range, windows)``; ``finish(end)`` the rest. The ranges cover ``[start, end]`` end to
    end, each cut in the middle of the pause between two parts' windows, so each range holds
    its part's windows whole (progress counts seconds of the file) and no window lies across
    two ranges. No window at all (silence): one part, the whole file, none."""

    def __init__(self, chunk_s: float, start: float = 0.0):
        self.chunk_s = chunk_s
        self.cut = start  # where the next part's range begins
        self.group: list[tuple[float, float]] = []  # the windows of the part still open

    def add(self, windows: list[tuple[float, float]]) -> list[Part]:
        parts: list[Part] = []
        for window in windows:
            window = (float(window[0]), float(window[1]))
            if self.group and window[1] - self.group[0][0] <= self.chunk_s:
                self.group.append(window)
                continue
            if self.group:
                cut = (self.group[-1][1] + window[0]) / 2
                parts.append(((self.cut, cut), self.group))
                self.cut = cut
            self.group = [window]
        return parts

    def finish(self, end: float) -> list[Part]:
        """The last part, up to ``end`` (or its last window's end, if later)."""
        last_end = self.group[-1][1] if self.group else self.cut
        part = ((self.cut, max(end, last_end)), self.group)
        self.group = []
        return [part]


def group_windows(
    windows: list[tuple[float, float]], duration: float, chunk_s: float
) -> tuple[list[tuple[float, float]], list[list[tuple[float, float]]]]:
    """All of a file's windows grouped at once (see :class:`PartPlanner`): ``(ranges,
    windows_of_each_part)``, covering ``[0, duration]`` (or the last window's end)."""
    planner = PartPlanner(chunk_s)
    parts = planner.add(windows) + planner.finish(duration)
    return [r for r, _ in parts], [group for _, group in parts]


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
