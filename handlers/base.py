"""Handler protocols: exactly what the worker calls on model code, one protocol per family.

Handlers know nothing of Celery or HTTP. A worker constructs each one as
``Handler(source, device, cache_dir=..., **entry)`` where ``source`` is what to load
(a local directory or a Hugging Face repo id) and ``entry`` is the catalog entry
(``name``, ``hf_repo_id``, ``pooling``, ``defaults``, ...; accept ``**entry`` for the rest).
Calls that run long take a ``cancel_event``; a handler checks it between units of work
(batches, decoding steps, audio chunks) and raises :class:`Cancelled` when it is set.

Every handler class declares ``family`` (a :class:`Family`): the worker picks its serving
code by it. A handler needs nothing from this project but the protocol of its family
(inheriting from :class:`HandlerDefaults` is optional); the optional attributes the worker
honours, with their defaults, are the ones :class:`HandlerDefaults` lists, read through
:func:`optional`.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

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
    finish_reason: Literal["stop", "length", "tool_calls"] = "stop"
    # OpenAI tool_calls objects ({id, type, function{name, arguments}}); ``text`` is then the
    # content before them ("" when none).
    tool_calls: list[dict[str, Any]] | None = None
    # With ``logprobs`` requested: one compact entry per content token (handlers.chat.logprobs:
    # ``[token, logprob, bytes|None, [[token, logprob, bytes|None], ...]]``).
    logprobs: list[list[Any]] | None = None
    prompt_logprobs: list[list[Any]] | None = None  # the prompt's tokens (``echo``)


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
    # Its text tokens' {token, logprob, bytes} (OpenAI's transcription logprobs), where the
    # handler has them; the tokens' text joins to ``text``.
    logprobs: list[dict[str, Any]] | None = None


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


class HandlerDefaults:
    """The optional handler attributes the worker honours, with the values it assumes when a
    handler does not set them (a handler may inherit from this class or set its own).

    ``thread_safe``      may be called from several threads at once
    ``max_parallelism``  cap on concurrent calls into one instance (4 when thread_safe and unset)
    ``owned_by``         shown by ``/v1/models`` when the catalog entry names no owner
    ``max_length``       the longest input, in tokens (shown by ``/v1/models``)
    ``max_batch_size``   chat: most requests decoded together (8 when unset)
    ``upstream``         the handler forwards requests to an OpenAI-compatible server
                         (:class:`UpstreamChatModel`, :class:`UpstreamEmbeddingModel`)
    ``dtype``            what the model computes in (shown by ``/v1/models``; bf16/fp16 on a
                         CPU turns on ``EMBED_SHAPE_TOKENS``' and ``EMBED_WARM_UP_TOKENS``'
                         auto values)
    """

    thread_safe: ClassVar[bool] = False
    max_parallelism: ClassVar[int | None] = None
    owned_by: ClassVar[str] = "local"
    max_length: int | None = None
    max_batch_size: int | None = None
    upstream: ClassVar[bool] = False


OPTIONAL_DEFAULTS: dict[str, Any] = {
    name: value for name, value in vars(HandlerDefaults).items() if not name.startswith("_")
}


def optional(handler: Any, attribute: str) -> Any:
    """A handler's optional attribute (one :class:`HandlerDefaults` lists), or its default."""
    return getattr(handler, attribute, OPTIONAL_DEFAULTS[attribute])


@runtime_checkable
class EmbeddingModel(Protocol):
    """``/v1/embeddings``. The worker's batcher groups texts of concurrent requests by length
    and calls ``embed_batch`` once per forward pass."""

    family: Family  # Family.EMBEDDINGS
    capabilities: list[str]  # ["text-embedding"]
    dim: int

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Each text's length in tokens (after truncation): batch planning and usage."""
        ...

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """One forward pass: a ``(len(texts), dim)`` float array, L2-normalised rows."""
        ...


@runtime_checkable
class RerankModel(Protocol):
    """``/v1/rerank``. The worker's batcher groups (query, document) pairs of concurrent
    requests and calls ``score_batch`` once per forward pass."""

    family: Family  # Family.RERANK
    capabilities: list[str]  # ["rerank"]

    def token_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]: ...

    def score_batch(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One forward pass: a relevance score per pair (higher is more relevant)."""
        ...


class DecodingRow(Protocol):
    key: Any  # the worker's handle, given with the request to ChatBatch.add


@runtime_checkable
class ChatBatch(Protocol):
    """The rows a chat model decodes together (continuous batching). One thread drives it:
    before each ``step`` the worker ``add``s waiting requests while ``joinable``. Both return
    the requests that ended, as ``(key, ChatGeneration | Exception)``."""

    rows: list[DecodingRow]  # the worker clears it after failing them all
    joinable: bool

    def __len__(self) -> int: ...

    def add(self, items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        """Prefill ``(key, ChatRequest)`` items (``handlers.chat.ChatRequest``)."""
        ...

    def step(self) -> list[tuple[Any, Any]]:
        """One decoding step for every row."""
        ...


@runtime_checkable
class ChatModel(Protocol):
    """``/v1/chat/completions``; optional: ``max_batch_size``."""

    family: Family  # Family.CHAT
    capabilities: list[str]  # ["chat-completion"] or ["chat-completion", "vision"]
    generation_defaults: dict[str, Any]  # default sampling parameters (the entry's defaults)

    def new_batch(self) -> ChatBatch: ...


@runtime_checkable
class SpeechModel(Protocol):
    """``/v1/audio/transcriptions`` and ``/translations``; optional: ``thread_safe``,
    ``max_parallelism``.

    Three keyword parameters of ``transcribe`` are optional, and the worker passes them only
    when the signature names them: ``clip=(start_s, end_s)`` transcribes only that range,
    timestamps staying absolute (without it, long audio is not split across workers);
    ``on_segment(SpeechSegment)`` is called as each segment is ready (without it, a streamed
    response gets its text at the end); ``vad={threshold, min_silence_ms, speech_pad_ms}``
    tunes the voice activity detection (the request's ``chunking_strategy: server_vad``;
    without it, the request's VAD settings are ignored). ``window_submit``: see
    :class:`WindowBatchingSpeechModel` (without it, the worker runs one ``transcribe`` at a
    time per model, or ``max_parallelism`` when ``thread_safe``). ``windows``: see
    :class:`WindowPlanningSpeechModel` (without it, a long job is cut at pauses).
    """

    family: Family  # Family.SPEECH
    capabilities: list[str]  # ["audio-transcription"], plus "audio-translation"

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
class WindowBatchingSpeechModel(SpeechModel, Protocol):
    """Optional: a speech model whose windows of *many* requests share batches (both Whisper
    handlers). The worker recognises it by ``decode_windows`` and a ``window_submit``
    parameter of ``transcribe``, and then:

    * calls ``transcribe(..., window_submit=submit)`` in the job thread **without** holding
      the model: the handler decodes the audio, finds the speech and plans its windows there,
      and hands every window it needs decoded to ``submit(key, windows) -> list[Future]``
      (one future per window, resolving to what ``decode_windows`` returned for it, raising
      the batch's exception, or :class:`Cancelled` once the request's ``cancel_event`` is set);
    * runs one window batcher thread per model, the only thread that touches the model: it
      calls ``decode_windows(key, windows, cancel_event)`` with up to ``batch_size`` windows
      that share one ``key`` (hashable: whatever must be equal for windows to be decoded
      together, such as task, language, temperature, prompt), gathered from every request in
      flight, the most urgent first (a sync request's windows before a job's, a bulk job's
      filling the rest). ``cancel_event`` is set once every request in the batch is cancelled.

    Windows and outputs are opaque to the worker (the handler's own types).
    """

    batch_size: int

    def decode_windows(
        self, key: Hashable, windows: list[Any], cancel_event: threading.Event | None = None
    ) -> list[Any]:
        """One batched pass over ``windows`` (equal ``key``): one output per window."""
        ...


@runtime_checkable
class WindowPlanningSpeechModel(SpeechModel, Protocol):
    """Optional: a speech model that plans a long file's windows once, for the whole file
    (both Whisper handlers). The worker recognises it by ``plan_windows`` and a ``windows``
    parameter of ``transcribe`` (next to ``clip``), and then, for a long job:

    * calls ``plan_windows(audio_path, vad=...)`` once where the job is planned: the
      windows to decode, ``(start_s, end_s)`` in order, never cutting speech (``vad``: the
      request's ``server_vad`` settings, only when the signature names it);
    * groups consecutive windows into parts, each part a range of the file holding whole
      windows, and has each part transcribed with ``transcribe(..., clip=(start_s, end_s),
      windows=[its windows])``: the handler decodes exactly those windows (times in the
      file) and plans nothing of its own.
    """

    def plan_windows(self, audio_path: str) -> list[tuple[float, float]]: ...


def plans_window_blocks(handler: Any) -> bool:
    """Whether a window-planning handler also plans block by block (optional:
    ``plan_window_blocks(audio_path, vad=..., start_s=...)`` yielding lists of windows as the
    VAD finds them; both Whisper handlers): a long job's first parts then start while the
    rest of the file is planned."""
    return callable(getattr(handler, "plan_window_blocks", None))


def plans_windows(handler: Any) -> bool:
    """Whether a long job's windows are planned once by the handler (see
    :class:`WindowPlanningSpeechModel`)."""
    return (
        callable(getattr(handler, "plan_windows", None))
        and transcribe_accepts(handler, "windows")
        and transcribe_accepts(handler, "clip")
    )


def batches_windows(handler: Any) -> bool:
    """Whether the worker may batch this speech handler's windows across requests."""
    return callable(getattr(handler, "decode_windows", None)) and transcribe_accepts(
        handler, "window_submit"
    )


def transcribe_accepts(handler: Any, parameter: str) -> bool:
    """Whether the handler's ``transcribe`` takes the optional ``clip``, ``on_segment``,
    ``vad``, ``window_submit`` or ``windows``."""
    try:
        return parameter in inspect.signature(handler.transcribe).parameters
    except (TypeError, ValueError):
        return False


@runtime_checkable
class UpstreamChatModel(Protocol):
    """Chat forwarded to an OpenAI-compatible server, one request at a time (the upstream
    batches). Raises ``handlers.proxy.UpstreamError`` for what the upstream refused."""

    family: Family  # Family.CHAT
    upstream: bool  # True
    capabilities: list[str]
    generation_defaults: dict[str, Any]

    def chat(
        self,
        body: dict[str, Any],
        *,
        on_chunk: Callable[[str], None] | None = None,
        cancel_event: threading.Event | None = None,
    ) -> bytes:
        """The upstream's ``chat.completion`` JSON; streamed chunks' JSON to ``on_chunk``."""
        ...


@runtime_checkable
class UpstreamEmbeddingModel(Protocol):
    """Embeddings forwarded to an OpenAI-compatible server (see :class:`UpstreamChatModel`)."""

    family: Family  # Family.EMBEDDINGS
    upstream: bool  # True
    capabilities: list[str]

    def embeddings(self, body: dict[str, Any]) -> bytes:
        """The upstream's embeddings response JSON for an OpenAI embeddings body."""
        ...


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
