"""Whisper through transformers (``WhisperForConditionalGeneration``): the long-form loop."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

import numpy as np

from handlers.base import (
    Family,
    SpeechSegment,
    SpeechWord,
    check_cancelled,
    resolve_device,
)
from handlers.speech.audio import SAMPLE_RATE
from handlers.speech.fallback import is_silence
from handlers.speech.handler import SpeechHandler, model_name
from handlers.speech.language import NO_SPACE_LANGUAGES
from handlers.speech.pipeline import AudioWindow, WindowOptions, WindowOutput
from handlers.speech.request import SpeechRequest
from handlers.speech.token_logprobs import logprob_entries
from handlers.speech.vad import Window
from handlers.speech.whisper_config import prepare_generation
from handlers.speech.whisper_decode import WindowDecode, decode_windows
from handlers.speech.windows import window_pieces
from handlers.speech.words import group_words, place_words


class WhisperASR(SpeechHandler):
    """Whisper through transformers (``WhisperForConditionalGeneration``).

    The audio goes through the speech pipeline (:mod:`handlers.speech.pipeline`): its VAD
    windows (with other requests' windows of the same options, in a worker) are decoded
    ``batch_size`` at a time (one encoder pass, one batched
    ``generate`` per temperature of the fallback ladder, only the windows that need it
    decoded again hotter); each window's timestamp tokens split it into segments. The
    prompt conditions the first window only. The cancel event is checked between batches
    and at every decoding step. Word timestamps
    come from dynamic time warping over the cross-attention of the model's
    ``alignment_heads``; a checkpoint without them uses every head of the upper half of
    the decoder layers (OpenAI's default), which is coarser.

    Catalog extras: ``batch_size`` (default 8), ``beam_size`` (default 1: greedy,
    transformers' beam search costs ~3x on CPU; used at temperature 0 only). The entry's
    ``torch_dtype`` (``dtype`` is an older name for it) defaults to ``auto``: see
    :mod:`handlers.dtype`.
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
        torch_dtype: str | None = None,
        dtype: str | None = None,
        **entry: Any,
    ):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from handlers.dtype import resolve_dtype  # torch: imported with the model only

        self.name = model_name(source, name, hf_repo_id)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(torch_dtype or dtype, self.device)
        self.processor = WhisperProcessor.from_pretrained(
            source, cache_dir=cache_dir, local_files_only=True
        )
        self.model = WhisperForConditionalGeneration.from_pretrained(
            source, cache_dir=cache_dir, local_files_only=True, dtype=self.dtype
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

    def window_options(
        self, request: SpeechRequest, language: str | None, first: bool
    ) -> WindowOptions:
        prompt = request.prompt if request.prompt and request.prompt.strip() else None
        return WindowOptions(
            task=request.task,
            language=language,
            temperatures=request.temperatures,
            prompt=prompt if first else None,  # the prompt conditions the first window only
            word_timestamps=request.word_timestamps,
        )

    def decode_windows(
        self,
        key: Hashable,
        windows: list[AudioWindow],
        cancel_event: threading.Event | None = None,
    ) -> list[WindowOutput]:
        """One encoder pass and one batched decode per language over ``windows`` (of one or
        many requests); without a language each window is decoded in the one it is
        detected in."""
        import torch

        options = key
        assert isinstance(options, WindowOptions)
        check_cancelled(cancel_event)
        features = self.processor.feature_extractor(
            [w.samples for w in windows],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            return_attention_mask=True,
        )
        input_features = features.input_features.to(self.device, self.model.dtype)
        attention_mask = features.attention_mask.to(self.device)
        prompt_ids = self._prompt_ids(options.prompt)
        outputs = [WindowOutput() for _ in windows]
        with torch.inference_mode():
            encoded = self.model.get_encoder()(input_features).last_hidden_state
            no_speech, detected = self._probe(encoded)
            languages = [options.language or code for code in detected]
            for language in dict.fromkeys(languages):
                rows = [i for i, code in enumerate(languages) if code == language]
                index = torch.tensor(rows, device=encoded.device)
                decoded = self._decode_windows(
                    encoded[index],
                    attention_mask[index],
                    language=language,
                    task=options.task,
                    prompt_ids=prompt_ids,
                    temperatures=options.temperatures,
                    word_timestamps=options.word_timestamps,
                    no_speech_probs=[no_speech[i] for i in rows],
                    cancel_event=cancel_event,
                )
                for i, result in zip(rows, decoded, strict=True):
                    outputs[i].language = language
                    if not is_silence(no_speech[i], result.avg_logprob):
                        self._read_window(
                            windows[i].window, result, no_speech[i], language, outputs[i]
                        )
        return outputs

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
            if decoded.token_logprobs is not None:
                segment.logprobs = logprob_entries(
                    self._tokenizer,
                    [decoded.tokens[i] for i in text_positions],
                    [decoded.token_logprobs[i] for i in text_positions],
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
