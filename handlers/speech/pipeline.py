"""The one speech pipeline of every Whisper handler: VAD windows decoded in batches.

``decoded audio → VAD windows (:mod:`handlers.speech.vad`) → batches of windows → segments``.
A handler supplies only ``decode_windows(options, windows, cancel_event)`` (one batch of
:class:`AudioWindow` in, one :class:`WindowOutput` per window out, times in the request's
audio) and the :class:`WindowOptions` of a request's windows; this module owns the order, the
guards and the cancel checks. Windows are handed to a ``submit(options, windows)`` that returns
a future per window: in a worker, the model's window batcher (``workers/audio/batcher.py``),
which decodes windows of many requests together when their options are equal; outside one,
:class:`DirectWindows` (this request's windows only, ``batch_size`` at a time), or
:class:`LaneWindows` for a handler with several decode lanes (as many batches at once).

* **Nothing lost.** Whisper sometimes closes a window's last segment and stops a second or
  more before the window's speech ends (it expects the window to be cut). The sequential
  long-form loop would start its next window there; here such an uncovered tail becomes a
  window of its own, decoded in the next batch.
* **Nothing invented.** Segments are clamped into their window (so into the audio), ordered
  and never overlapping; windows are speech only, so silence yields no text.
* Segments are passed to ``on_segment`` in order as soon as every window before them is done.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from handlers.base import SpeechResult, SpeechSegment, SpeechWord, check_cancelled
from handlers.speech.audio import SAMPLE_RATE
from handlers.speech.request import SpeechRequest
from handlers.speech.vad import Window, speech_windows

TAIL_SECONDS = 1.0  # an uncovered end of a window longer than this is decoded again
WAIT_POLL_SEC = 0.2  # how often a request waiting for its windows looks at its cancel event


@dataclass(frozen=True)
class WindowOptions:
    """What windows decoded together must share (the batching key of ``decode_windows``)."""

    task: str
    language: str | None  # None: detect it (per window)
    temperatures: tuple[float, ...]
    prompt: str | None
    word_timestamps: bool


@dataclass(frozen=True, eq=False)
class AudioWindow:
    """One window of one request's audio: what ``decode_windows`` decodes."""

    audio: np.ndarray  # the request's whole audio (16 kHz mono float32)
    window: Window

    @property
    def samples(self) -> np.ndarray:
        return self.audio[self.window.start : self.window.end]


@dataclass
class WindowOutput:
    """One window's decoding: segments and words with times in seconds from the start of
    the request's audio (the handler adds the window's start), and the language used."""

    segments: list[SpeechSegment] = field(default_factory=list)
    words: list[SpeechWord] = field(default_factory=list)
    language: str | None = None


Decode = Callable[[WindowOptions, list[AudioWindow], "threading.Event | None"], list[WindowOutput]]
Submit = Callable[[WindowOptions, list[AudioWindow]], list[Future]]
OptionsFor = Callable[[SpeechRequest, "str | None", bool], WindowOptions]


class _Deferred(Future):
    """A window waiting in :class:`DirectWindows`: decoded when its result is first asked for."""

    def __init__(self, owner: DirectWindows):
        super().__init__()
        self.owner = owner

    def result(self, timeout: float | None = None):
        if not self.done():
            self.owner.decode_through(self)
        return super().result()


class DirectWindows:
    """The ``submit`` of a handler called outside a worker: windows decoded in the calling
    thread, ``batch_size`` at a time (the wanted window and the next ones pending with the
    same options), when a result is first asked for."""

    def __init__(self, decode: Decode, batch_size: int, cancel_event: threading.Event | None):
        self.decode = decode
        self.batch_size = batch_size
        self.cancel_event = cancel_event
        self.pending: list[tuple[WindowOptions, AudioWindow, _Deferred]] = []

    def submit(self, options: WindowOptions, windows: list[AudioWindow]) -> list[Future]:
        futures = [_Deferred(self) for _ in windows]
        self.pending.extend(zip([options] * len(windows), windows, futures, strict=True))
        return futures

    def decode_through(self, wanted: _Deferred) -> None:
        """Decode ``wanted`` with up to ``batch_size - 1`` other pending windows of its
        options, in the order they were submitted (so an uncovered tail, submitted late,
        shares a batch with the windows still pending instead of being decoded alone)."""
        at = next(i for i, (_, _, future) in enumerate(self.pending) if future is wanted)
        options = self.pending[at][0]
        batch = [self.pending.pop(at)]
        i = 0
        while len(batch) < self.batch_size and i < len(self.pending):
            if self.pending[i][0] == options:
                batch.append(self.pending.pop(i))
            else:
                i += 1
        check_cancelled(self.cancel_event)
        try:
            outputs = self.decode(options, [window for _, window, _ in batch], self.cancel_event)
        except BaseException as exc:
            for _, _, future in batch:
                future.set_exception(exc)
            raise
        for (_, _, future), output in zip(batch, outputs, strict=True):
            future.set_result(output)


class LaneWindows:
    """The ``submit`` of a handler with several decode lanes (``decode_lanes`` > 1) called
    outside a worker: this request's windows decoded ``batch_size`` at a time on as many
    threads as lanes, at once (as a worker's window batcher would); ``close`` when done."""

    def __init__(
        self, decode: Decode, batch_size: int, lanes: int, cancel_event: threading.Event | None
    ):
        self.decode = decode
        self.batch_size = batch_size
        self.cancel_event = cancel_event
        self.pool = ThreadPoolExecutor(lanes, thread_name_prefix="speech-lane")

    def submit(self, options: WindowOptions, windows: list[AudioWindow]) -> list[Future]:
        futures: list[Future] = []
        for first in range(0, len(windows), self.batch_size):
            batch = windows[first : first + self.batch_size]
            batch_futures = [Future() for _ in batch]
            self.pool.submit(self._decode, options, batch, batch_futures)
            futures += batch_futures
        return futures

    def _decode(self, options: WindowOptions, batch: list[AudioWindow], futures: list[Future]):
        wanted = [future.set_running_or_notify_cancel() for future in futures]
        if not any(wanted):
            return  # every window of the batch is no longer wanted
        try:
            check_cancelled(self.cancel_event)
            outputs = self.decode(options, batch, self.cancel_event)
        except BaseException as exc:
            for future in futures:
                with contextlib.suppress(InvalidStateError):
                    future.set_exception(exc)
            return
        for future, output in zip(futures, outputs, strict=True):
            with contextlib.suppress(InvalidStateError):
                future.set_result(output)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def uncovered_tail(window: Window, output: WindowOutput) -> Window | None:
    """The end of ``window`` its segments left out, when longer than ``TAIL_SECONDS``."""
    if not output.segments:
        return None  # no speech recognised: nothing to resume from
    covered = round(output.segments[-1].end * SAMPLE_RATE)
    if window.end - covered <= TAIL_SECONDS * SAMPLE_RATE:
        return None
    if covered <= window.start:  # every segment closed at <|0.00|>: the tail is the window,
        return None  # and decoding it again with the same options gives the same text twice
    return Window(covered, window.end)


def _wait(future: Future, cancel_event: threading.Event | None) -> WindowOutput:
    while True:
        check_cancelled(cancel_event)
        try:
            return future.result(timeout=WAIT_POLL_SEC)
        except TimeoutError:
            continue


def transcribe_windows(
    request: SpeechRequest, submit: Submit, options_for: OptionsFor
) -> SpeechResult:
    """Run ``request`` through the pipeline (see the module docstring): its windows (the
    planned ``request.windows``, else the VAD's of its audio) are handed
    to ``submit`` at once (grouped by the options ``options_for(request, language, first)``
    gives it), then the outputs are read in order; an uncovered tail is submitted as soon as
    its window's output is read. Without a ``language``, the first window is decoded alone
    first and the language it was decoded in is the request's."""
    check_cancelled(request.cancel_event)
    windows = request.windows
    if windows is None:
        windows = speech_windows(request.audio, request.vad)
    language = request.language
    futures: dict[Window, Future] = {}

    def send(group: list[Window], first: bool) -> None:
        options = options_for(request, language, first)
        items = [AudioWindow(request.audio, w) for w in group]
        futures.update(zip(group, submit(options, items), strict=True))

    try:
        if windows and language is None:
            send(windows[:1], True)
            language = _wait(futures[windows[0]], request.cancel_event).language
        rest = [w for w in windows if w not in futures]
        if rest:
            if rest[0] is windows[0]:
                send(rest[:1], True)
                rest = rest[1:]
            if rest:
                send(rest, False)
        known = list(windows)
        tails: set[Window] = set()
        segments: list[SpeechSegment] = []
        words: list[SpeechWord] = []
        i = 0
        while i < len(known):
            window = known[i]
            output = _wait(futures.pop(window), request.cancel_event)
            tail = None if window in tails else uncovered_tail(window, output)
            if tail is not None:
                tails.add(tail)
                known.insert(i + 1, tail)
                send([tail], False)
            _emit(request, window, output, segments, words)
            i += 1
    except BaseException:  # cancelled or failed: the windows still pending are not wanted
        for future in futures.values():
            future.cancel()
        raise
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


def speech_result(
    segments: list[SpeechSegment], words: list[SpeechWord], language: str | None, duration: float
) -> SpeechResult:
    text = "".join(segment.text for segment in segments).strip()
    return SpeechResult(
        text=text, language=language, duration=duration, segments=segments, words=words
    )


def clamp_span(start: float, end: float, *, after: float, limit: float) -> tuple[float, float]:
    """A segment's ``(start, end)`` kept in order and inside the audio: not before ``after``
    (the previous segment's end), not past ``limit`` (the end of the audio), rounded to ms."""
    start = min(max(start, after), limit)
    return round(start, 3), round(min(max(end, start), limit), 3)
