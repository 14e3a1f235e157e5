"""The one speech pipeline of every Whisper handler: VAD windows decoded in batches.

``decoded audio → VAD windows (:mod:`handlers.speech.vad`) → batches of windows → segments``.
A handler supplies only :class:`WindowDecoder` (one batch of windows in, each window's segments
out, times absolute in the request's audio); this module owns the order, the guards and the
cancel checks:

* **Nothing lost.** Whisper sometimes closes a window's last segment and stops a second or
  more before the window's speech ends (it expects the window to be cut). The sequential
  long-form loop would start its next window there; here such an uncovered tail becomes a
  window of its own, decoded in the next batch.
* **Nothing invented.** Segments are clamped into their window (so into the audio), ordered
  and never overlapping; windows are speech only, so silence yields no text.
* Segments are passed to ``on_segment`` in order as soon as every window before them is done.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from handlers.base import SpeechResult, SpeechSegment, SpeechWord, check_cancelled
from handlers.speech.audio import SAMPLE_RATE
from handlers.speech.handler import clamp_span, speech_result
from handlers.speech.request import SpeechRequest
from handlers.speech.vad import Window, speech_windows

TAIL_SECONDS = 1.0  # an uncovered end of a window longer than this is decoded again


@dataclass
class WindowOutput:
    """One window's decoding: segments and words with times in seconds from the start of
    the request's audio (the handler adds the window's start)."""

    segments: list[SpeechSegment] = field(default_factory=list)
    words: list[SpeechWord] = field(default_factory=list)


class WindowDecoder(Protocol):
    def __call__(
        self, audio: np.ndarray, windows: Sequence[Window], language: str | None
    ) -> tuple[list[WindowOutput], str]:
        """Decode ``windows`` of ``audio`` together; returns one output per window and the
        language (detected on this batch when ``language`` is None)."""
        ...


def uncovered_tail(window: Window, output: WindowOutput) -> Window | None:
    """The end of ``window`` its segments left out, when longer than ``TAIL_SECONDS``."""
    if not output.segments:
        return None  # no speech recognised: nothing to resume from
    covered = round(output.segments[-1].end * SAMPLE_RATE)
    if window.end - covered <= TAIL_SECONDS * SAMPLE_RATE:
        return None
    return Window(max(covered, window.start), window.end)


def transcribe_windows(
    request: SpeechRequest, decode: WindowDecoder, batch_size: int
) -> SpeechResult:
    """Run ``request`` through the pipeline with ``decode`` (see the module docstring)."""
    check_cancelled(request.cancel_event)
    windows = speech_windows(request.audio, request.vad)
    pending = deque(windows)
    known = list(windows)  # every window, sorted by start (tails are inserted)
    tails: set[Window] = set()
    outputs: dict[Window, WindowOutput] = {}
    language = request.language
    segments: list[SpeechSegment] = []
    words: list[SpeechWord] = []
    emitted = 0
    while pending:
        check_cancelled(request.cancel_event)
        batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
        decoded, language = decode(request.audio, batch, language)
        check_cancelled(request.cancel_event)
        for window, output in zip(batch, decoded, strict=True):
            outputs[window] = output
            tail = None if window in tails else uncovered_tail(window, output)
            if tail is not None:
                tails.add(tail)
                bisect.insort(known, tail, key=lambda w: w.start)
                pending.appendleft(tail)
        while emitted < len(known) and known[emitted] in outputs:
            _emit(request, known[emitted], outputs.pop(known[emitted]), segments, words)
            emitted += 1
    check_cancelled(request.cancel_event)
    return speech_result(segments, words, language or "en", request.duration)


def _emit(
    request: SpeechRequest,
    window: Window,
    output: WindowOutput,
    segments: list[SpeechSegment],
    words: list[SpeechWord],
) -> None:
    """Append one window's segments and words, clamped into the window and after what came
    before, shifted to the file's time (``request.offset``), numbered in order."""
    offset = request.offset
    window_end = offset + window.end / SAMPLE_RATE
    for produced in output.segments:
        start, end = clamp_span(
            offset + produced.start,
            offset + produced.end,
            after=segments[-1].end if segments else offset,
            limit=window_end,
        )
        if end <= start and produced.end > produced.start:
            continue  # wholly inside what an earlier segment covers
        produced.id, produced.start, produced.end = len(segments), start, end
        produced.seek = round((offset + window.start_seconds) * 100)
        segments.append(produced)
        if request.on_segment is not None:
            request.on_segment(produced)
    first = segments[0].start if segments else offset
    for word in output.words:
        start, end = clamp_span(
            offset + word.start,
            offset + word.end,
            after=max(words[-1].start if words else first, first),
            limit=window_end,
        )
        words.append(SpeechWord(word=word.word, start=start, end=end))
