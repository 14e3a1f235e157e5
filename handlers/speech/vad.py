"""Voice activity detection and the windows every Whisper handler decodes.

Silero VAD (the ONNX model and the ``vad`` module faster-whisper ships; nothing is
downloaded) finds the speech; the speech regions are merged, in order, into windows of at
most 30 s. A window is one contiguous range of the audio: from the start of its first region
to the end of its last (the short pauses between them included, so timestamps stay plain
offsets). A window never starts or ends inside a region; a region longer than a window was
already cut by the VAD at its quietest recent moment (``max_speech_duration_s``). So every
second of speech lies in exactly one window, windows never overlap, and silence yields none.

The windows are independent (no text of one conditions the next), which is what lets a
handler decode them in batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from handlers.speech.audio import SAMPLE_RATE
from handlers.speech.windows import WINDOW_SECONDS

MAX_REGION_SECONDS = WINDOW_SECONDS - 1.0  # room for the padding around a cut region
MIN_SILENCE_MS = 160  # a pause this long ends a speech region (faster-whisper's batched value)
SPEECH_PAD_MS = 200


@dataclass(frozen=True)
class VadParameters:
    """What a request may tune of the VAD (OpenAI's ``chunking_strategy: server_vad``):
    the speech probability a frame needs, the pause that ends a region, the padding kept
    around each region."""

    threshold: float = 0.5
    min_silence_ms: int = MIN_SILENCE_MS
    speech_pad_ms: int = SPEECH_PAD_MS


@dataclass(frozen=True)
class Window:
    """A range of the request's audio, in samples: ``audio[start:end]``."""

    start: int
    end: int

    @property
    def start_seconds(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def speech_regions(audio: np.ndarray, vad: VadParameters | None = None) -> list[tuple[int, int]]:
    """Speech as ``(start, end)`` sample ranges, each at most ``MAX_REGION_SECONDS`` long."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if len(audio) == 0:
        return []
    vad = vad or VadParameters()
    options = VadOptions(
        threshold=vad.threshold,
        max_speech_duration_s=MAX_REGION_SECONDS,
        min_silence_duration_ms=vad.min_silence_ms,
        speech_pad_ms=vad.speech_pad_ms,
    )
    found = get_speech_timestamps(np.ascontiguousarray(audio, dtype=np.float32), options)
    regions: list[tuple[int, int]] = []
    for region in found:
        start = max(int(region["start"]), regions[-1][1] if regions else 0)
        end = min(int(region["end"]), len(audio))
        if end > start:
            regions.append((start, end))
    return regions


def merge_regions(
    regions: list[tuple[int, int]], window_samples: int = WINDOW_SECONDS * SAMPLE_RATE
) -> list[Window]:
    """Consecutive regions merged greedily into windows of at most ``window_samples``."""
    windows: list[Window] = []
    for start, end in regions:
        if windows and end - windows[-1].start <= window_samples:
            windows[-1] = Window(windows[-1].start, end)
        else:
            windows.append(Window(start, min(end, start + window_samples)))
    return windows


def speech_windows(audio: np.ndarray, vad: VadParameters | None = None) -> list[Window]:
    """The windows to decode for ``audio`` (16 kHz mono): speech only, each at most 30 s."""
    return merge_regions(speech_regions(audio, vad))
