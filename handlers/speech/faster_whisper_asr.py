"""Whisper through faster-whisper (CTranslate2)."""

from __future__ import annotations

from typing import Any

from handlers.base import (
    Family,
    SpeechResult,
    SpeechSegment,
    SpeechWord,
    check_cancelled,
    resolve_device,
)
from handlers.speech.ct2_weights import resolve_ct2_model
from handlers.speech.handler import SpeechHandler, model_name, speech_result
from handlers.speech.request import SpeechRequest


class FasterWhisperASR(SpeechHandler):
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

    family = Family.SPEECH

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

        self.name = model_name(source, name, hf_repo_id)
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
        self._set_multilingual(bool(self.model.model.is_multilingual))

    @property
    def supported_languages(self) -> list[str]:
        return list(self.model.supported_languages)

    def _transcribe(self, request: SpeechRequest) -> SpeechResult:
        prompt, cancel_event, on_segment = request.prompt, request.cancel_event, request.on_segment
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
        return speech_result(segments, words, info.language, request.duration)
