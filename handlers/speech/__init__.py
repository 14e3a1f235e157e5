"""Speech-to-text handlers: Whisper through transformers or through faster-whisper (CTranslate2).

Both handlers run one speech pipeline (:mod:`~handlers.speech.pipeline`): decoded audio, Silero
VAD windows of at most 26 s (:mod:`~handlers.speech.vad`), windows decoded in batches,
segments clamped into their windows. Both implement ``decode_windows`` (one batched pass over
windows of one or many requests with equal :class:`~handlers.speech.pipeline.WindowOptions`),
so a worker decodes the windows of concurrent requests together
(:class:`handlers.base.WindowBatchingSpeechModel`). They share the request semantics:

* ``language``: ISO-639-1 code or English name; ``None`` detects it (multilingual models,
  from the first 30 s window) or means ``"en"`` (English-only ``.en`` models, which reject
  any other language and ``task="translate"`` with :class:`InvalidInput`).
* ``prompt``: OpenAI's ``initial_prompt`` (transformers: the first window; faster-whisper's
  batched pipeline: every window); no window is conditioned on previous text, which keeps
  small models from looping and lets windows decode in batches.
* ``temperature``: ``None`` or ``0`` decodes at 0; both handlers then decode again through
  0.2 ... 1.0 the windows whose average log-probability is < -1 (one policy,
  :mod:`~handlers.speech.fallback`) and keep each window's most likely result; a positive
  value samples at exactly that temperature.
* ``timestamp_granularity="word"`` adds word timings (cross-attention DTW); segments are
  always returned.
* extras: ``on_segment(segment)`` is called as each segment becomes final (progress), and
  ``clip=(start, end)`` transcribes only that range of the file; all timestamps stay
  absolute (offset by ``start``) and ``duration`` is the clip's.

Modules: :mod:`~handlers.speech.handler` (the shared ``transcribe`` call),
:mod:`~handlers.speech.request` (validation and decoding of one request),
:mod:`~handlers.speech.audio` (PyAV decoding, split points for long files),
:mod:`~handlers.speech.language`, :mod:`~handlers.speech.fallback` (temperature ladder),
:mod:`~handlers.speech.vad`, :mod:`~handlers.speech.pipeline` (windows in batches),
:mod:`~handlers.speech.windows` (30 s windows, timestamp tokens -> segments),
:mod:`~handlers.speech.words` (word timestamps); transformers:
:mod:`~handlers.speech.whisper_asr`, :mod:`~handlers.speech.whisper_config`,
:mod:`~handlers.speech.whisper_decode`; faster-whisper:
:mod:`~handlers.speech.faster_whisper_asr`, :mod:`~handlers.speech.faster_whisper_batch`,
:mod:`~handlers.speech.ct2_weights`.
Catalog entries name the handlers as ``handlers.speech.WhisperASR`` and
``handlers.speech.FasterWhisperASR``.
"""

from handlers.speech.ct2_weights import PACKAGED_CT2_MODELS, packaged_model_dir, resolve_ct2_model
from handlers.speech.fallback import (
    FALLBACK_TEMPERATURES,
    LOGPROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    compression_ratio,
)
from handlers.speech.faster_whisper_asr import FasterWhisperASR
from handlers.speech.handler import SpeechHandler
from handlers.speech.language import NO_SPACE_LANGUAGES
from handlers.speech.request import SegmentCallback
from handlers.speech.whisper_asr import WhisperASR
from handlers.speech.windows import (
    TIME_PRECISION,
    WINDOW_SECONDS,
    split_timestamped_tokens,
)
from handlers.speech.words import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS, group_words

__all__ = [
    "APPEND_PUNCTUATIONS",
    "FALLBACK_TEMPERATURES",
    "LOGPROB_THRESHOLD",
    "NO_SPACE_LANGUAGES",
    "NO_SPEECH_THRESHOLD",
    "PACKAGED_CT2_MODELS",
    "PREPEND_PUNCTUATIONS",
    "TIME_PRECISION",
    "WINDOW_SECONDS",
    "FasterWhisperASR",
    "SegmentCallback",
    "SpeechHandler",
    "WhisperASR",
    "compression_ratio",
    "group_words",
    "packaged_model_dir",
    "resolve_ct2_model",
    "split_timestamped_tokens",
]
