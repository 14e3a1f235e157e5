"""Whisper through transformers (``WhisperForConditionalGeneration``): the long-form loop."""

from __future__ import annotations

from typing import Any

import numpy as np

from handlers.base import (
    Family,
    SpeechResult,
    SpeechSegment,
    SpeechWord,
    resolve_device,
)
from handlers.speech.audio import SAMPLE_RATE
from handlers.speech.fallback import is_silence
from handlers.speech.handler import SpeechHandler, model_name
from handlers.speech.language import NO_SPACE_LANGUAGES
from handlers.speech.pipeline import WindowOutput, transcribe_windows
from handlers.speech.request import SpeechRequest
from handlers.speech.vad import Window
from handlers.speech.whisper_config import prepare_generation
from handlers.speech.whisper_decode import WindowDecode, decode_windows
from handlers.speech.windows import window_pieces
from handlers.speech.words import group_words, place_words


class WhisperASR(SpeechHandler):
    """Whisper through transformers (``WhisperForConditionalGeneration``).

    The audio goes through the speech pipeline (:mod:`handlers.speech.pipeline`): its VAD
    windows are decoded ``batch_size`` at a time (one encoder pass, one batched
    ``generate`` per temperature of the fallback ladder, only the windows that need it
    decoded again hotter); each window's timestamp tokens split it into segments. The
    prompt conditions the first window only. The cancel event is checked between batches
    and at every decoding step. Word timestamps
    come from dynamic time warping over the cross-attention of the model's
    ``alignment_heads``; a checkpoint without them uses every head of the upper half of
    the decoder layers (OpenAI's default), which is coarser.

    Catalog extras: ``batch_size`` (default 8), ``beam_size`` (default 1: greedy,
    transformers' beam search costs ~3x on CPU; used at temperature 0 only), ``dtype``
    (default float16 on CUDA, else float32).
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
        batch_size: int = 8,
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
        self.batch_size = max(1, int(batch_size))
        self._tokenizer = self.processor.tokenizer
        self._setup = prepare_generation(self.model, self._tokenizer)
        self._set_multilingual(self._setup.multilingual)
        self.alignment_heads_source = self._setup.alignment_heads_source

    @property
    def supported_languages(self) -> list[str]:
        return sorted(self._setup.language_ids) if self.multilingual else ["en"]

    def _transcribe(self, request: SpeechRequest) -> SpeechResult:
        prompt_ids = self._prompt_ids(request.prompt)
        batches = 0

        def decode(audio, windows, language):
            nonlocal batches
            batches += 1
            if prompt_ids is None or batches > 1:
                return self._decode_batch(audio, windows, language, request, None)
            # the prompt conditions the request's first window (the first batch's first)
            head, language = self._decode_batch(audio, windows[:1], language, request, prompt_ids)
            if len(windows) == 1:
                return head, language
            rest, language = self._decode_batch(audio, windows[1:], language, request, None)
            return head + rest, language

        return transcribe_windows(request, decode, self.batch_size)

    def _decode_batch(
        self, audio: np.ndarray, windows, language: str | None, request: SpeechRequest, prompt_ids
    ) -> tuple[list[WindowOutput], str]:
        """One encoder pass and one batched decode over ``windows``."""
        import torch

        features = self.processor.feature_extractor(
            [audio[w.start : w.end] for w in windows],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            return_attention_mask=True,
        )
        input_features = features.input_features.to(self.device, self.model.dtype)
        attention_mask = features.attention_mask.to(self.device)
        with torch.inference_mode():
            encoded = self.model.get_encoder()(input_features).last_hidden_state
            no_speech, detected = self._probe(encoded)
            language = language or detected[0]
            decoded = self._decode_windows(
                encoded,
                attention_mask,
                language=language,
                task=request.task,
                prompt_ids=prompt_ids,
                temperatures=request.temperatures,
                word_timestamps=request.word_timestamps,
                no_speech_probs=no_speech,
                cancel_event=request.cancel_event,
            )
        outputs = []
        for window, result, silence_prob in zip(windows, decoded, no_speech, strict=True):
            output = WindowOutput()
            outputs.append(output)
            if is_silence(silence_prob, result.avg_logprob):
                continue
            self._read_window(window, result, silence_prob, language, output)
        return outputs, language

    def _read_window(
        self,
        window: Window,
        decoded: WindowDecode,
        no_speech_prob: float,
        language: str,
        output: WindowOutput,
    ) -> None:
        eot = self._setup.eot
        window_start = window.start_seconds
        for first, last, start, end in window_pieces(
            decoded.tokens, self._setup.timestamp_begin, eot, window.seconds
        ):
            text_positions = [i for i in range(first, last) if decoded.tokens[i] < eot]
            text = self._tokenizer.decode([decoded.tokens[i] for i in text_positions])
            if not text.strip():
                continue
            segment = SpeechSegment(
                id=0,
                start=round(window_start + start, 3),
                end=round(window_start + end, 3),
                text=text,
                tokens=list(decoded.tokens[first:last]),
                temperature=decoded.temperature,
                avg_logprob=decoded.avg_logprob,
                compression_ratio=decoded.compression_ratio,
                no_speech_prob=no_speech_prob,
            )
            output.segments.append(segment)
            if decoded.token_times is not None:
                output.words.extend(
                    self._words(decoded, text_positions, segment, window_start, language)
                )

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

    def _probe(self, encoded) -> tuple[list[float], list[str]]:
        """Each row's no-speech probability and most likely language, from the logits
        after SOT."""
        import torch

        setup = self._setup
        rows = encoded.shape[0]
        decoder_input = torch.full((rows, 1), setup.sot, device=self.device)
        logits = self.model(encoder_outputs=(encoded,), decoder_input_ids=decoder_input).logits
        logits = logits[:, -1].float()
        probs = logits.softmax(-1)
        if setup.no_speech_id is not None:
            no_speech = [float(p) for p in probs[:, setup.no_speech_id]]
        else:
            no_speech = [0.0] * rows
        if not setup.language_ids:
            return no_speech, ["en"] * rows
        codes = list(setup.language_ids)
        ids = torch.tensor([setup.language_ids[c] for c in codes], device=logits.device)
        return no_speech, [codes[int(i)] for i in logits[:, ids].argmax(-1)]

    def _decode_windows(self, encoded, attention_mask, **options) -> list[WindowDecode]:
        """A batch of windows (see :func:`~handlers.speech.whisper_decode.decode_windows`);
        a method so that tests can wrap it."""
        return decode_windows(
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
