"""Whisper through transformers (``WhisperForConditionalGeneration``): the long-form loop."""

from __future__ import annotations

from typing import Any

import numpy as np

from handlers.base import (
    Family,
    SpeechResult,
    SpeechSegment,
    SpeechWord,
    check_cancelled,
    resolve_device,
)
from handlers.speech.audio import SAMPLE_RATE
from handlers.speech.fallback import is_silence
from handlers.speech.handler import SpeechHandler, model_name, speech_result
from handlers.speech.language import NO_SPACE_LANGUAGES
from handlers.speech.request import SpeechRequest
from handlers.speech.whisper_config import prepare_generation
from handlers.speech.whisper_decode import WindowDecode, decode_window
from handlers.speech.windows import MIN_WINDOW_SAMPLES, WINDOW_SECONDS, split_timestamped_tokens
from handlers.speech.words import group_words, place_words


class WhisperASR(SpeechHandler):
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

    family = Family.SPEECH

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

        self.name = model_name(source, name, hf_repo_id)
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
        self._setup = prepare_generation(self.model, self._tokenizer)
        self._set_multilingual(self._setup.multilingual)
        self.alignment_heads_source = self._setup.alignment_heads_source

    @property
    def supported_languages(self) -> list[str]:
        return sorted(self._setup.language_ids) if self.multilingual else ["en"]

    def _transcribe(self, request: SpeechRequest) -> SpeechResult:
        prompt, cancel_event, on_segment = request.prompt, request.cancel_event, request.on_segment
        import torch

        prompt_ids = self._prompt_ids(prompt)
        language_code = request.language
        window_samples = WINDOW_SECONDS * SAMPLE_RATE
        audio = request.audio
        eot = self._setup.eot
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
            if is_silence(no_speech_prob, decoded.avg_logprob):
                seek += len(chunk)  # silence: skip the window
                continue
            pieces, advance = split_timestamped_tokens(
                decoded.tokens, self._setup.timestamp_begin, window_seconds
            )
            for start_index, end_index, start, end in pieces:
                text_positions = [
                    i for i in range(start_index, end_index) if decoded.tokens[i] < eot
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
        return speech_result(segments, words, language_code or "en", request.duration)

    # ---------------------------------------------------------------- internals

    def _prompt_ids(self, prompt: str | None):
        """``<|startofprev|>`` + the prompt's tokens, keeping its end when it is too long."""
        import torch

        if not prompt or not prompt.strip():
            return None
        limit = self._setup.max_prompt_tokens
        ids = self._tokenizer.get_prompt_ids(prompt, return_tensors="np")
        if len(ids) > limit + 1:
            ids = np.concatenate([ids[:1], ids[-limit:]])
        return torch.as_tensor(ids, device=self.device)

    def _probe(self, encoded) -> tuple[float, str | None]:
        """No-speech probability and most likely language, from the logits after SOT."""
        import torch

        setup = self._setup
        decoder_input = torch.tensor([[setup.sot]], device=self.device)
        logits = self.model(encoder_outputs=(encoded,), decoder_input_ids=decoder_input).logits
        logits = logits[0, -1].float()
        probs = logits.softmax(-1)
        no_speech = float(probs[setup.no_speech_id]) if setup.no_speech_id is not None else 0.0
        if not setup.language_ids:
            return no_speech, "en"
        codes = list(setup.language_ids)
        ids = torch.tensor([setup.language_ids[c] for c in codes], device=logits.device)
        return no_speech, codes[int(logits[ids].argmax())]

    def _decode_window(self, encoded, attention_mask, **options) -> WindowDecode:
        """One window (see :func:`~handlers.speech.whisper_decode.decode_window`); a method
        so that tests can wrap it."""
        return decode_window(
            self.model,
            self._setup,
            self._tokenizer,
            encoded,
            attention_mask,
            beam_size=self.beam_size,
            **options,
        )

    def _words(
        self,
        decoded: WindowDecode,
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
        return place_words(grouped, starts, ends, segment, window_start)
