"""Handler protocols: what the worker expects from model code.

Handlers know nothing of Celery or HTTP. A worker constructs each one as
``Handler(source, device, cache_dir=..., **entry)`` where ``source`` is what to load
(a local directory or a Hugging Face repo id) and ``entry`` is the catalog entry
(``name``, ``hf_repo_id``, ``pooling``, ``defaults``, ...). Every call takes an optional
``cancel_event``; a handler checks it between units of work (batches, decoding steps,
audio chunks) and raises :class:`Cancelled` when it is set.

Optional attributes the worker honours:

``thread_safe``                 may be called from several threads at once (default False)
``max_parallelism``             cap on concurrent calls into one instance (1 unless thread_safe)
``generation_defaults``         default sampling parameters for chat handlers
``supports_structured_outputs`` chat handler accepts ``response_format``
``owned_by``                    shown by ``/v1/models`` (default ``"local"``)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np


class Family(StrEnum):
    """The endpoint family a handler serves: declared as ``family`` on each handler class, so
    the worker picks the serving code (batcher, executor) by family, never by probing."""

    EMBEDDINGS = "embeddings"
    CHAT = "chat"
    SPEECH = "speech"
    RERANK = "rerank"


class Cancelled(Exception):
    """Raised by a handler when its ``cancel_event`` was set mid-work."""


class InvalidInput(ValueError):
    """Raised by a handler for input it cannot process (the client's fault, a 400)."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_input"):
        super().__init__(message)
        self.param = param
        self.code = code


def check_cancelled(cancel_event: threading.Event | None) -> None:
    if cancel_event is not None and cancel_event.is_set():
        raise Cancelled()


@dataclass
class ChatGeneration:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"] = "stop"


@dataclass
class SpeechSegment:
    id: int
    start: float
    end: float
    text: str
    seek: int = 0
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass
class SpeechWord:
    word: str
    start: float
    end: float


@dataclass
class SpeechResult:
    text: str
    language: str | None
    duration: float
    segments: list[SpeechSegment] = field(default_factory=list)
    words: list[SpeechWord] = field(default_factory=list)


@dataclass
class RerankResult:
    index: int
    relevance_score: float


@runtime_checkable
class EmbeddingModel(Protocol):
    name: str
    dim: int
    device: Any
    capabilities: list[str]  # ["text-embedding"]

    def embed(
        self, texts: list[str], cancel_event: threading.Event | None = None
    ) -> np.ndarray: ...

    def count_tokens(self, texts: list[str]) -> int: ...


@runtime_checkable
class ChatModel(Protocol):
    name: str
    device: Any
    capabilities: list[str]  # ["chat-completion"] or ["chat-completion", "vision"]

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str] | None = None,
        cancel_event: threading.Event | None = None,
    ) -> ChatGeneration: ...

    def count_tokens(
        self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True
    ) -> int: ...


@runtime_checkable
class SpeechModel(Protocol):
    name: str
    device: Any
    capabilities: list[str]  # ["audio-transcription"]

    def transcribe(
        self,
        audio_path: str,
        *,
        language: str | None,
        prompt: str | None,
        temperature: float | None,
        task: Literal["transcribe", "translate"],
        timestamp_granularity: Literal["word", "segment", None],
        cancel_event: threading.Event | None = None,
    ) -> SpeechResult: ...


@runtime_checkable
class RerankModel(Protocol):
    name: str
    device: Any
    capabilities: list[str]  # ["rerank"]

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        cancel_event: threading.Event | None = None,
    ) -> list[RerankResult]: ...


def resolve_device(requested: str = "auto") -> str:
    """``auto`` picks cuda, then mps, then cpu; anything else is returned unchanged."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
