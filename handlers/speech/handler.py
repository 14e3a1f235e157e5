"""What both Whisper handlers share: the public ``transcribe`` call and its result.

A subclass loads its model, sets ``name`` and ``device``, calls ``_set_multilingual``, provides
``supported_languages`` and implements :meth:`SpeechHandler._transcribe` on a validated
:class:`~handlers.speech.request.SpeechRequest`.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Literal

from handlers.base import SpeechResult, SpeechSegment, SpeechWord
from handlers.speech.request import SegmentCallback, SpeechRequest, prepare_request
from handlers.speech.vad import VadParameters


class SpeechHandler:
    """Base of the speech handlers (see :mod:`handlers.speech` for the request semantics)."""

    thread_safe = False
    owned_by = "local"

    name: str
    device: Any
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
        return self._transcribe(
            dataclasses.replace(
                request,
                prompt=prompt,
                vad=VadParameters(**vad) if vad else None,
                cancel_event=cancel_event,
                on_segment=on_segment,
            )
        )

    def _transcribe(self, request: SpeechRequest) -> SpeechResult:
        raise NotImplementedError


def model_name(source: str, name: str | None, hf_repo_id: str | None) -> str:
    """The name a handler reports: the catalog name, else the repo id, else the source."""
    return name or hf_repo_id or str(source)


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
