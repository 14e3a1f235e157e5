"""One ``transcribe`` call on a handler, and the shapes its result takes on the way out
(progress objects, part results, the rendered response body)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers.base import SpeechResult, SpeechSegment, transcribe_accepts
from inferq.openai.transcripts import TranscriptionJob, render

if TYPE_CHECKING:  # the registry imports the serving modules
    from workers.loaded import LoadedModel


def transcribe(
    model: LoadedModel,
    path: Path,
    job: TranscriptionJob,
    *,
    cancel_event: threading.Event,
    on_segment: Callable[[SpeechSegment], None] | None = None,
    clip: tuple[float, float] | None = None,
    window_submit: Any = None,
    windows: list[list[float]] | None = None,
) -> SpeechResult:
    """``handler.transcribe`` with the job's options; ``on_segment`` only where it is taken;
    ``window_submit`` (a window batcher's :class:`~workers.audio.batcher.Submitter`'s
    ``submit``) only for a handler that batches windows; ``windows`` (a part's planned
    windows) only for a handler that plans them."""
    handler = model.handler
    kwargs: dict[str, Any] = {
        "language": job.language,
        "prompt": job.prompt,
        "temperature": job.temperature,
        "task": job.task,
        "timestamp_granularity": job.granularity,
        "cancel_event": cancel_event,
    }
    if on_segment is not None and transcribe_accepts(handler, "on_segment"):
        kwargs["on_segment"] = on_segment
    if clip is not None:
        kwargs["clip"] = clip
    if job.vad and transcribe_accepts(handler, "vad"):
        kwargs["vad"] = job.vad
    if window_submit is not None:
        kwargs["window_submit"] = window_submit
    if windows is not None:
        kwargs["windows"] = [(float(start), float(end)) for start, end in windows]
    return handler.transcribe(str(path), **kwargs)


def language_name(code: str | None) -> str:
    """OpenAI writes the language's English name ("english"), not its code."""
    if not code:
        return "unknown"
    try:
        from transformers.models.whisper.tokenization_whisper import LANGUAGES
    except ImportError:  # pragma: no cover - workers install transformers
        return code
    return LANGUAGES.get(code, code)


def render_body(
    job: TranscriptionJob,
    *,
    language: str | None,
    duration: float,
    segments: list[dict[str, Any]],
    words: list[dict[str, Any]],
) -> bytes:
    return render(
        job, language=language_name(language), duration=duration, segments=segments, words=words
    )


def segment_dicts(result: SpeechResult, *, logprobs: bool = False) -> list[dict[str, Any]]:
    """The segments as dicts; their ``logprobs`` only when the job asks for them."""
    dicts = [dataclasses.asdict(s) for s in result.segments]
    if not logprobs:
        for segment in dicts:
            segment.pop("logprobs", None)
    return dicts


def word_dicts(result: SpeechResult) -> list[dict[str, Any]]:
    return [dataclasses.asdict(w) for w in result.words]


def part_result(result: SpeechResult, *, logprobs: bool = False) -> dict[str, Any]:
    """A part's result as stored in the job's parts hash."""
    return {
        "segments": segment_dicts(result, logprobs=logprobs),
        "words": word_dicts(result),
        "language": result.language,
        "duration": result.duration,
    }


def compact(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Segments as progress shows them: id, start, end, text."""
    return [
        {"id": i, "start": s["start"], "end": s["end"], "text": s["text"]}
        for i, s in enumerate(segments)
    ]


def progress(done: float, total: float, parts_done: int, parts: int, segments) -> dict:
    done = min(done, total)
    return {
        "completed": round(done, 3),
        "total": round(total, 3),
        "fraction": round(done / total, 4) if total > 0 else 0.0,
        "unit": "seconds",
        "chunks_completed": parts_done,
        "chunks_total": parts,
        "segments": segments,
    }
