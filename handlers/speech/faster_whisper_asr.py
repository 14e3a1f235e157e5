"""Whisper through faster-whisper (CTranslate2)."""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np

from handlers.base import (
    Family,
    SpeechSegment,
    SpeechWord,
    check_cancelled,
    resolve_device,
)
from handlers.cpuinfo import first_processor, this_processor
from handlers.speech.audio import SAMPLE_RATE
from handlers.speech.ct2_weights import resolve_ct2_model
from handlers.speech.handler import SpeechHandler, model_name
from handlers.speech.pipeline import AudioWindow, WindowOptions, WindowOutput
from handlers.speech.request import SpeechRequest

if TYPE_CHECKING:
    from handlers.speech.faster_whisper_batch import WindowPipeline

FRAMES_PER_SECOND = 100  # Whisper's mel frames per second (a segment's ``seek`` unit)

# The fastest CTranslate2 compute types first, per device (see docs/benchmarks.md, "Speech
# compute types": on CPU int8 measured fastest at the same WER, float32 about 1.8 x slower;
# CTranslate2 offers the bf16 types on CUDA only, even on a CPU with AVX512-BF16).
PREFERRED_COMPUTE_TYPES = {
    "cpu": ("int8", "int8_float32", "float32"),
    "cuda": ("float16", "int8_float16", "bfloat16", "float32"),
}


def default_compute_type(device: str, supported: set[str] | None = None) -> str:
    """The first of :data:`PREFERRED_COMPUTE_TYPES` the device supports."""
    if supported is None:
        import ctranslate2

        supported = set(ctranslate2.get_supported_compute_types(device))
    for compute_type in PREFERRED_COMPUTE_TYPES[device]:
        if compute_type in supported:
            return compute_type
    return "default"


def ct2_uses_mkl(cpuinfo: str | None = None) -> bool:
    """Whether CTranslate2 runs its CPU matrix products through Intel MKL (else oneDNN).

    The PyPI wheels hold both: CTranslate2 takes MKL on a ``GenuineIntel`` CPU and oneDNN on
    any other, unless ``CT2_USE_MKL`` says otherwise (its ``src/cpu/backend.cc``)."""
    forced = os.environ.get("CT2_USE_MKL", "").strip().lower()
    if forced:
        return forced in ("1", "true", "on", "yes")
    fields = this_processor() if cpuinfo is None else first_processor(cpuinfo)
    return fields.get("vendor_id") == "GenuineIntel"


def auto_batch_size(
    device: str, lane_threads: int, batch_size: int | str, *, mkl: bool | None = None
) -> int:
    """Windows per batch for a catalog's ``batch_size`` (``auto`` or a count).

    ``auto``: 8 on CUDA and for a lane of several CPU threads (batches keep the threads
    busy: 2 threads, 1.13 s per window alone, 0.56 s in a batch of 8). For a lane of one CPU
    thread it depends on CTranslate2's matrix backend, measured with ``python -m bench
    speech_batches`` (docs/benchmarks.md, "One window per lane on CPU" and "Batches again
    where CTranslate2 uses oneDNN"): through oneDNN (AMD EPYC Zen 5) batches of 4 decode
    30 % more audio per second than single windows (0.66 against 0.94 s per window; 8 no
    better); through MKL (Intel Xeon with AMX) a batch gains nothing (0.68 s alone, 0.82 s
    in a batch of 4), so one window per batch there."""
    if batch_size not in (None, "auto"):
        return max(1, int(batch_size))
    if device != "cpu" or lane_threads != 1:
        return 8
    if mkl is None:
        mkl = ct2_uses_mkl()
    return 1 if mkl else 4


MAX_AUTO_LANES = 4  # more lanes, more batches in flight per worker (and model replicas)


def auto_lanes(device: str, cpu_threads: int, lanes: int | str) -> tuple[int, int]:
    """``(cpu_threads, decode_lanes)`` for a catalog's values (``lanes`` ``auto`` or a count).

    On CPU, CTranslate2 decodes more audio per second as several batches at once with few
    threads each than as one batch with every core: on a 2-core CPU two lanes of one thread
    ran a 600 s job 14-16 % faster than one lane of two (docs/benchmarks.md, "Decode
    lanes"). ``auto``: on CUDA one lane; on CPU, with ``cpu_threads`` given, as many lanes
    as fit the usable cores, else one lane per core (at most ``MAX_AUTO_LANES``, the cores
    shared out as threads)."""
    if lanes not in (None, "auto"):
        return cpu_threads, max(1, int(lanes))
    if device != "cpu":
        return cpu_threads, 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    if cpu_threads > 0:
        return cpu_threads, max(1, min(MAX_AUTO_LANES, cores // cpu_threads))
    count = min(MAX_AUTO_LANES, cores)
    return max(1, cores // count), count


class FasterWhisperASR(SpeechHandler):
    """Whisper through faster-whisper (CTranslate2).

    The audio is cut into the VAD windows of :mod:`handlers.speech.vad` (the same windows
    as every Whisper handler) and decoded by faster-whisper's batched pipeline
    (:mod:`.faster_whisper_batch`):
    ``batch_size`` windows per encoder pass and batched beam search (``beam_size``,
    default 5), no conditioning on previous text, timestamps inside each window. The prompt
    conditions every window. The request's temperatures are tried in turn: every window at
    the first (beam search at 0), then, hotter, only the windows the shared fallback policy
    (:mod:`handlers.speech.fallback`, WhisperASR's too) marks as unlikely; each window keeps
    its most likely result. Word timestamps use faster-whisper's cross-attention
    DTW over the model's alignment heads. Segments come batch by batch, and the cancel
    event is checked after each one.

    Catalog extras: ``beam_size``, ``batch_size`` (default ``auto``:
    :func:`auto_batch_size`: on CPU lanes of one thread 4 through oneDNN, 1 through MKL),
    ``compute_type`` (default
    ``auto``: :func:`default_compute_type`, int8 on CPU, float16 on CUDA), ``cpu_threads``
    (threads per batch; 0: see ``decode_lanes``), ``decode_lanes`` (batches decoded at once,
    each with ``cpu_threads`` threads; a worker's window batcher runs one batch per lane;
    default ``auto``: :func:`auto_lanes`), ``weights_package`` ("module/dir" holding
    model.bin).
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
        batch_size: int | str = "auto",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        decode_lanes: int | str = "auto",
        weights_package: str | None = None,
        **entry: Any,
    ):
        from faster_whisper import WhisperModel

        from handlers.speech.faster_whisper_batch import WindowPipeline

        self.name = model_name(source, name, hf_repo_id)
        device = resolve_device(device)
        self.device = "cuda" if device.startswith("cuda") else "cpu"  # CTranslate2: cpu/cuda
        device_index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        if compute_type in (None, "auto"):
            compute_type = default_compute_type(self.device)
        self.compute_type = compute_type
        self.model_path = resolve_ct2_model(source, weights_package)
        cpu_threads, self.decode_lanes = auto_lanes(self.device, int(cpu_threads), decode_lanes)
        self.model = WhisperModel(
            self.model_path,
            device=self.device,
            device_index=device_index,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=self.decode_lanes,  # CTranslate2's inter_threads
            download_root=cache_dir,
            local_files_only=True,
        )
        # One pipeline per lane: a pipeline holds the state of the batch it decodes.
        self._pipelines: queue.SimpleQueue[WindowPipeline] = queue.SimpleQueue()
        for _ in range(self.decode_lanes):
            self._pipelines.put(WindowPipeline(self.model))
        self.pipeline: WindowPipeline | None = None  # the last batch's (its tries, for a look)
        self.beam_size = max(1, int(beam_size))
        self.batch_size = auto_batch_size(self.device, cpu_threads, batch_size)
        self._set_multilingual(bool(self.model.model.is_multilingual))

    @property
    def supported_languages(self) -> list[str]:
        return list(self.model.supported_languages)

    def window_options(
        self, request: SpeechRequest, language: str | None, first: bool
    ) -> WindowOptions:
        prompt = request.prompt.strip() if request.prompt and request.prompt.strip() else None
        return WindowOptions(
            task=request.task,
            language=language,
            temperatures=request.temperatures,  # the fallback ladder (WindowPipeline)
            prompt=prompt,  # every window (faster-whisper's batched pipeline)
            word_timestamps=request.word_timestamps,
        )

    def decode_windows(
        self,
        key: Hashable,
        windows: list[AudioWindow],
        cancel_event: threading.Event | None = None,
    ) -> list[WindowOutput]:
        """One batched pass of faster-whisper over ``windows`` (of one or many requests).

        The windows' samples are laid end to end and given to the batched pipeline as clip
        timestamps; each segment goes back to its window by its ``seek`` and is shifted into
        its request's audio. Windows to be decoded in a language still to detect are decoded
        one by one (each detects its own)."""
        options = key
        assert isinstance(options, WindowOptions)
        if options.language is None and self.multilingual and len(windows) > 1:
            return [self.decode_windows(options, [w], cancel_event)[0] for w in windows]
        check_cancelled(cancel_event)
        pipeline = self._pipelines.get()  # a free lane's (one per batch decoded at once)
        try:
            return self._decode(pipeline, options, windows, cancel_event)
        finally:
            self.pipeline = pipeline
            self._pipelines.put(pipeline)

    def _decode(
        self,
        pipeline: WindowPipeline,
        options: WindowOptions,
        windows: list[AudioWindow],
        cancel_event: threading.Event | None,
    ) -> list[WindowOutput]:
        pieces = [w.samples for w in windows]
        starts = np.cumsum([0] + [len(x) for x in pieces])
        pipeline.temperatures = options.temperatures
        pipeline.cancel_event = cancel_event
        generated, info = pipeline.transcribe(
            np.concatenate(pieces).astype(np.float32, copy=False),
            language=options.language or ("en" if not self.multilingual else None),
            task=options.task,
            beam_size=self.beam_size,
            batch_size=len(windows),
            temperature=options.temperatures[0],
            initial_prompt=options.prompt,
            condition_on_previous_text=False,
            without_timestamps=False,
            word_timestamps=options.word_timestamps,
            clip_timestamps=[
                {"start": starts[i] / SAMPLE_RATE, "end": starts[i + 1] / SAMPLE_RATE}
                for i in range(len(windows))
            ],
        )
        outputs = [WindowOutput(language=info.language) for _ in windows]
        seeks = [starts[i] / SAMPLE_RATE * FRAMES_PER_SECOND for i in range(len(windows))]
        generated = list(generated)  # decodes the batch: used_temperatures is set then
        used = pipeline.used_temperatures
        for produced in generated:
            # a segment's seek is its window's start in frames (windows are >= 0.25 s long)
            index = min(range(len(windows)), key=lambda i: abs(seeks[i] - produced.seek))
            place = functools.partial(
                _place,
                offset=starts[index] / SAMPLE_RATE,
                start=windows[index].window.start_seconds,
            )
            outputs[index].segments.append(
                SpeechSegment(
                    id=0,
                    start=place(produced.start),
                    end=place(produced.end),
                    text=produced.text,
                    tokens=list(produced.tokens),
                    temperature=used[index],
                    avg_logprob=float(produced.avg_logprob),
                    compression_ratio=float(produced.compression_ratio),
                    no_speech_prob=float(produced.no_speech_prob),
                )
            )
            outputs[index].words.extend(
                SpeechWord(word=w.word.strip(), start=place(w.start), end=place(w.end))
                for w in produced.words or []
                if w.word.strip()
            )
        return outputs


def _place(t: float, *, offset: float, start: float) -> float:
    """A time of the laid-out batch (``offset``: its window's place there) in the request's
    audio (``start``: the window's start there), window-relative to the ms, so the same
    whatever the window's place in the batch."""
    return round(float(t) - offset, 3) + start
