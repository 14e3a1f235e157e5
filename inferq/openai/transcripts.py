"""``/v1/audio/transcriptions`` and ``/v1/audio/translations``: the job request a worker gets
and the response bodies (json, verbose_json, text, srt, vtt). The form model is in
``inferq/openai/audio.py``."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from inferq import protocol as p
from inferq.openai.common import JobRequest


class TranscriptionJob(JobRequest):
    """What an audio worker gets: the upload is the blob ``blob`` of the blob store."""

    task: Literal["transcribe", "translate"]
    blob: str
    filename: str = ""
    bytes: int = 0
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    response_format: str = "json"
    timestamp_granularities: list[str] = Field(default_factory=list)
    stream: bool = False
    # chunking_strategy server_vad as the handlers' VAD parameters (threshold,
    # min_silence_ms, speech_pad_ms); None: the pipeline's own ("auto")
    vad: dict[str, float] | None = None
    # include[]=logprobs: the json response carries ``logprobs``, the text tokens' entries
    # ({token, logprob, bytes}) the handler put on its segments (WhisperASR: token logprobs
    # from its generate scores; a handler without them, e.g. faster-whisper, gives none).
    logprobs: bool = False

    @property
    def granularity(self) -> str:
        """What the handler timestamps: ``word`` if words were asked for, else ``segment``."""
        return "word" if "word" in self.timestamp_granularities else "segment"


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def subtitles(segments: list[dict[str, Any]], fmt: str) -> str:
    """SRT or WebVTT cues, one per non-blank segment."""
    cues = []
    for number, segment in enumerate((s for s in segments if s["text"].strip()), start=1):
        sep = "," if fmt == "srt" else "."
        timing = f"{_clock(segment['start'], sep)} --> {_clock(segment['end'], sep)}"
        text = segment["text"].strip()
        cues.append(f"{number}\n{timing}\n{text}\n" if fmt == "srt" else f"{timing}\n{text}\n")
    body = "\n".join(cues)
    return body if fmt == "srt" else "WEBVTT\n\n" + body


def render(
    job: TranscriptionJob,
    *,
    language: str,
    duration: float,
    segments: list[dict[str, Any]],
    words: list[dict[str, Any]],
) -> bytes:
    """The route's response body: JSON, or a JSON string for text, srt and vtt.
    ``language`` is the language's English name ("english"), as OpenAI writes it."""
    text = "".join(s["text"] for s in segments).strip()
    entries = [s.pop("logprobs", None) for s in segments]  # never shown in verbose_json
    fmt = job.response_format
    translate = job.task == "translate"
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if fmt == "text":
        return p.dumps(text + "\n")
    if fmt in ("srt", "vtt"):
        return p.dumps(subtitles(segments, fmt))
    if fmt == "json":
        body = {"text": text} if translate else {"text": text, "usage": usage}
        if job.logprobs and all(e is not None for e in entries):
            body["logprobs"] = [entry for found in entries for entry in found]
        return p.dumps(body)
    granularities = job.timestamp_granularities or ["segment"]
    body: dict[str, Any] = {
        "task": job.task,
        "language": "english" if translate else language,
        "duration": round(duration, 3),
        "text": text,
    }
    if "segment" in granularities:
        body["segments"] = segments
    if "word" in granularities:
        body["words"] = words
    if not translate:
        body["usage"] = usage
    return p.dumps(body)
