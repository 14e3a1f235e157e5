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
from collections.abc import Hashable
from typing import Any, Literal

from handlers.base import SpeechResult
from handlers.speech.pipeline import (
    AudioWindow,
    DirectWindows,
    Submit,
    WindowOptions,
    WindowOutput,
    transcribe_windows,
)
from handlers.speech.request import SegmentCallback, SpeechRequest, prepare_request
from handlers.speech.vad import VadParameters


class SpeechHandler:
    """Base of the speech handlers (see :mod:`handlers.speech` for the request semantics)."""

    thread_safe = False
    owned_by = "local"

    name: str
    device: Any
    batch_size: int
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
            cancel_event=cancel_event,
            on_segment=on_segment,
        )
        if window_submit is None:
            window_submit = DirectWindows(
                self.decode_windows, self.batch_size, request.cancel_event
            ).submit
        return transcribe_windows(request, window_submit, self.window_options)

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


def model_name(source: str, name: str | None, hf_repo_id: str | None) -> str:
    """The name a handler reports: the catalog name, else the repo id, else the source."""
    return name or hf_repo_id or str(source)
