"""What both Whisper handlers share: the public ``transcribe`` call and its result.

A subclass loads its model, sets ``name``, ``device`` and ``batch_size``, calls
``_set_multilingual``, provides ``supported_languages`` and implements ``decode_windows``
(one batched pass over windows of one or many requests, see
:class:`handlers.base.WindowBatchingSpeechModel`) and ``window_options`` (the batching key of
a request's windows). The pipeline (:mod:`handlers.speech.pipeline`) does the rest.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Hashable, Iterator
from typing import Any, Literal

from handlers.base import SpeechResult
from handlers.speech.audio import SAMPLE_RATE, decode_audio
from handlers.speech.pipeline import (
    AudioWindow,
    DirectWindows,
    LaneWindows,
    Submit,
    WindowOptions,
    WindowOutput,
    transcribe_windows,
)
from handlers.speech.request import SegmentCallback, SpeechRequest, prepare_request
from handlers.speech.vad import VadParameters, Window, window_blocks


class SpeechHandler:
    """Base of the speech handlers (see :mod:`handlers.speech` for the request semantics)."""

    thread_safe = False
    owned_by = "local"

    name: str
    device: Any
    batch_size: int
    decode_lanes = 1  # batches the model decodes at once (faster-whisper on CPU: more)
    multilingual: bool
    # an instance attribute, set once the model is loaded (the worker reads the class's
    # ``capabilities`` before construction, so this must not be a property)
    capabilities: list[str]

    @property
    def supported_languages(self) -> list[str]:
        raise NotImplementedError

    def _set_multilingual(self, multilingual: bool) -> None:
        """Record whether the loaded model is multilingual, and so what it serves."""
        self.multilingual = multilingual
        self.capabilities = (
            ["audio-transcription", "audio-translation"]
            if multilingual
            else ["audio-transcription"]
        )

    def transcribe(
        self,
        audio_path: str,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        task: Literal["transcribe", "translate"] = "transcribe",
        timestamp_granularity: Literal["word", "segment", None] = None,
        cancel_event: threading.Event | None = None,
        on_segment: SegmentCallback | None = None,
        clip: tuple[float, float] | None = None,
        vad: dict[str, float] | None = None,
        window_submit: Submit | None = None,
        windows: list[tuple[float, float]] | None = None,
    ) -> SpeechResult:
        request = prepare_request(
            audio_path,
            model_name=self.name,
            multilingual=self.multilingual,
            supported_languages=self.supported_languages,
            language=language,
            task=task,
            timestamp_granularity=timestamp_granularity,
            temperature=temperature,
            clip=clip,
        )
        request = dataclasses.replace(
            request,
            prompt=prompt,
            vad=VadParameters(**vad) if vad else None,
            windows=None if windows is None else clip_windows(windows, request),
            cancel_event=cancel_event,
            on_segment=on_segment,
        )
        if window_submit is not None:
            return transcribe_windows(request, window_submit, self.window_options)
        lanes = self.decode_lanes
        if lanes == 1:
            direct = DirectWindows(self.decode_windows, self.batch_size, request.cancel_event)
            return transcribe_windows(request, direct.submit, self.window_options)
        on_lanes = LaneWindows(self.decode_windows, self.batch_size, lanes, request.cancel_event)
        try:
            return transcribe_windows(request, on_lanes.submit, self.window_options)
        finally:
            on_lanes.close()

    def plan_windows(
        self, audio_path: str, *, vad: dict[str, float] | None = None
    ) -> list[tuple[float, float]]:
        """The windows (``(start_s, end_s)``, in order) the pipeline would decode for the
        whole file: where a long job is planned, so that its parts, each given its windows
        (``transcribe(..., clip=..., windows=...)``), run no VAD of their own and no part
        boundary cuts speech."""
        return [w for block in self.plan_window_blocks(audio_path, vad=vad) for w in block]

    def plan_window_blocks(
        self, audio_path: str, *, vad: dict[str, float] | None = None, start_s: float = 0.0
    ) -> Iterator[list[tuple[float, float]]]:
        """``plan_windows`` from ``start_s`` on, as the VAD finds them: a list of windows per
        block of audio (:func:`handlers.speech.vad.window_blocks`), so a long job's first
        parts start decoding while the rest of the file is planned. ``start_s`` (a pause: a
        plan's resume point) lets a redelivered job carry on with a plan half made."""
        audio = decode_audio(audio_path, SAMPLE_RATE)
        start = min(len(audio), max(0, round(start_s * SAMPLE_RATE)))
        for block in window_blocks(audio, VadParameters(**vad) if vad else None, start):
            yield [(w.start / SAMPLE_RATE, w.end / SAMPLE_RATE) for w in block]

    def window_options(
        self, request: SpeechRequest, language: str | None, first: bool
    ) -> WindowOptions:
        """The options (batching key) of a request's windows; ``first``: its first window."""
        raise NotImplementedError

    def decode_windows(
        self,
        key: Hashable,
        windows: list[AudioWindow],
        cancel_event: threading.Event | None = None,
    ) -> list[WindowOutput]:
        raise NotImplementedError


def clip_windows(windows: list[tuple[float, float]], request: SpeechRequest) -> list[Window]:
    """Planned windows (seconds in the file) as sample ranges of the request's audio (which
    starts at ``request.offset``), cut to it; empty ones dropped."""
    found = []
    for start, end in windows:
        first = max(0, round((start - request.offset) * SAMPLE_RATE))
        last = min(len(request.audio), round((end - request.offset) * SAMPLE_RATE))
        if last > first:
            found.append(Window(first, last))
    return found


def model_name(source: str, name: str | None, hf_repo_id: str | None) -> str:
    """The name a handler reports: the catalog name, else the repo id, else the source."""
    return name or hf_repo_id or str(source)
