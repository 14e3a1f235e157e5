"""Voice activity detection and the windows every Whisper handler decodes.

Silero VAD (the ONNX model and the ``vad`` module faster-whisper ships; nothing is
downloaded) finds the speech; the speech regions are merged, in order, into windows of at
most ``WINDOW_AUDIO_SECONDS`` (26 s; Whisper's input is 30 s, see below). A window is one
contiguous range of the audio: from the start of its first region to the end of its last
(the short pauses between them included, so timestamps stay plain offsets). A window never
starts or ends inside a region; a region longer than a window was already cut by the VAD at
its quietest recent moment (``max_speech_duration_s``). So every second of speech lies in
exactly one window, windows never overlap, and silence yields none.

The windows are independent (no text of one conditions the next), which is what lets a
handler decode them in batches.

Why 26 s and not 30: Whisper learned on 30 s cuts of longer recordings, and when a window's
speech runs to within a few seconds of the 30 s end it often takes the last sentence for one
the cut interrupted and closes its output before it (the pipeline then decodes that uncovered
tail again, a whole extra row). With at least 4 s of silence after the speech the model sees
the speech end. Measured on the 600 s benchmark file (faster-whisper tiny.en, 2026-12-04):
windows of <= 30 s: 21 windows, 6 of them lost their last sentence (27 rows decoded, WER
0.094); <= 27 s: 24 windows, 1 tail (25 rows, WER 0.092); <= 26 s: 24 windows, no tail (24
rows, WER 0.084; 11-32 % faster than <= 30 s in two runs); <= 25 s: 25 windows, 3 tails.
On two minutes of continuous speech, <= 30 s windows left 3 tails, <= 26 s none.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from handlers.speech.audio import SAMPLE_RATE

WINDOW_AUDIO_SECONDS = 26  # the most audio one window holds (see the module docstring)
MAX_REGION_SECONDS = WINDOW_AUDIO_SECONDS - 1.0  # room for the padding around a cut region
MIN_SILENCE_MS = 160  # a pause this long ends a speech region (faster-whisper's batched value)
SPEECH_PAD_MS = 200
BLOCK_SECONDS = 120  # audio per VAD call (see window_blocks)
BLOCK_MARGIN_SECONDS = 2  # a region ending this close to a block's end is heard again
FRAME_SAMPLES = 512  # Silero VAD's frame at 16 kHz


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
    regions: list[tuple[int, int]], window_samples: int = WINDOW_AUDIO_SECONDS * SAMPLE_RATE
) -> list[Window]:
    """Consecutive regions merged greedily into windows of at most ``window_samples``."""
    windows: list[Window] = []
    for start, end in regions:
        if windows and end - windows[-1].start <= window_samples:
            windows[-1] = Window(windows[-1].start, end)
        else:
            windows.append(Window(start, min(end, start + window_samples)))
    return windows


def window_blocks(
    audio: np.ndarray, vad: VadParameters | None = None, start: int = 0
) -> Iterator[list[Window]]:
    """The windows of ``audio[start:]`` (16 kHz mono), block by block: the VAD runs over
    ``BLOCK_SECONDS`` at a time, and each block's windows are yielded as soon as they are
    final, so a long job's first parts can be decoded while the VAD goes on through the rest
    of the file (a 600 s file's VAD takes about a second of one core).

    A block's regions count only up to its last one that ends at least ``BLOCK_MARGIN_SECONDS``
    before the block's end (the pause after it was heard in full); the next block starts
    there, so the VAD hears every sample once more at most and a region running past a
    block's end is found whole in the next. The last window stays open (later regions may
    still join it) until a region that cannot join it comes, or the audio ends. Windows are
    those of the file's VAD region by region: ``speech_windows`` is these blocks joined."""
    block = BLOCK_SECONDS * SAMPLE_RATE
    margin = BLOCK_MARGIN_SECONDS * SAMPLE_RATE
    held: list[tuple[int, int]] = []  # the regions of the window still open
    floor = start  # where the regions taken so far end: no later one starts before it
    start -= start % FRAME_SAMPLES  # the VAD hears the frames of one pass from the start
    while start < len(audio):
        end = min(len(audio), start + block)
        found = [
            (max(floor, start + a), start + b)
            for a, b in speech_regions(audio[start:end], vad)
            if start + b > floor
        ]
        resume = end
        if end < len(audio):
            final = [region for region in found if region[1] <= end - margin]
            if final:
                resume = final[-1][1]
            elif found:  # no region ends in time: hear the block's speech with the next
                resume = found[0][0]
            else:
                resume = end - margin
            resume -= resume % FRAME_SAMPLES
            if resume > start:
                found = final
            else:  # a region as long as a block (the VAD cuts them at MAX_REGION_SECONDS)
                resume = end
        if found:
            floor = found[-1][1]
        windows = merge_regions(held + found)
        if windows:  # every window but the last is final: no later region joins it
            yield windows[:-1]
            last = windows[-1]
            held = [r for r in held + found if r[0] >= last.start]
        start = resume
    if held:
        yield merge_regions(held)


def speech_windows(audio: np.ndarray, vad: VadParameters | None = None) -> list[Window]:
    """The windows to decode for ``audio`` (16 kHz mono): speech only, each at most
    ``WINDOW_AUDIO_SECONDS``."""
    return [window for block in window_blocks(audio, vad) for window in block]
