"""One transcription request, validated (cheap checks first) and with its audio decoded."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from handlers.base import InvalidInput, SpeechSegment
from handlers.speech.audio import SAMPLE_RATE, decode_audio
from handlers.speech.fallback import temperatures
from handlers.speech.language import language_code
from handlers.speech.vad import VadParameters, Window

SegmentCallback = Callable[[SpeechSegment], None]


@dataclass
class SpeechRequest:
    audio: np.ndarray  # mono float32 at SAMPLE_RATE: the clip only, when one was asked for
    offset: float  # seconds into the file where ``audio`` starts
    duration: float
    language: str | None  # None: detect it
    task: str
    word_timestamps: bool
    temperatures: tuple[float, ...]
    prompt: str | None = None
    vad: VadParameters | None = None  # None: the pipeline's own
    windows: list[Window] | None = None  # planned already (a long job's part): no VAD here
    cancel_event: threading.Event | None = None
    on_segment: SegmentCallback | None = None  # called as each segment becomes final


def prepare_request(
    audio_path: str,
    *,
    model_name: str,
    multilingual: bool,
    supported_languages: Collection[str],
    language: str | None,
    task: str,
    timestamp_granularity: str | None,
    temperature: float | None,
    clip: tuple[float, float] | None,
) -> SpeechRequest:
    """Validate the request (cheap checks first), then decode the audio."""
    if task not in ("transcribe", "translate"):
        raise InvalidInput(f"unknown task {task!r}", param="task")
    if task == "translate" and not multilingual:
        raise InvalidInput(
            f"model {model_name!r} is English-only and cannot translate",
            param="task",
            code="unsupported_task",
        )
    if timestamp_granularity not in ("word", "segment", None):
        raise InvalidInput(
            f"unknown timestamp granularity {timestamp_granularity!r}",
            param="timestamp_granularities",
        )
    code = language_code(
        language, model_name=model_name, multilingual=multilingual, supported=supported_languages
    )
    ladder = temperatures(temperature)
    if clip is None:
        offset = 0.0
        audio = decode_audio(audio_path, SAMPLE_RATE)
    else:
        start, end = float(clip[0]), float(clip[1])
        if start < 0 or end <= start:
            raise InvalidInput(f"bad clip range {clip!r}", param="clip")
        offset = start
        audio = decode_audio(audio_path, SAMPLE_RATE, start=start, end=end)
    return SpeechRequest(
        audio=audio,
        offset=offset,
        duration=len(audio) / SAMPLE_RATE,
        language=code,
        task=task,
        word_timestamps=timestamp_granularity == "word",
        temperatures=ladder,
    )
