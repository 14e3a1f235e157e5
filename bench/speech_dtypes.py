"""faster-whisper ``compute_type`` on this machine: speed and WER of each supported type.

The offline demo ``Systran/faster-whisper-tiny.en`` through ``FasterWhisperASR`` (the handler
a worker runs: VAD windows in batches of 8, beam 5) on ``BENCH_SPEECH_SECONDS`` (default 120)
of espeak-ng speech (:func:`bench.audio.build_audio`). Every CTranslate2 compute type of
:data:`CANDIDATES` that the CPU supports is timed (best of ``BENCH_SPEECH_REPEATS``, default 2,
after a warm-up); the handler's default is what this measures fastest at the same WER.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.audio_common import MODEL, build_audio, figures
from inferq.devstack import ROOT

CANDIDATES = ("int8", "int8_bfloat16", "bfloat16", "int8_float32", "float32")


def run() -> dict:
    import ctranslate2

    from handlers.speech import FasterWhisperASR
    from handlers.speech.faster_whisper_asr import default_compute_type

    supported = ctranslate2.get_supported_compute_types("cpu")
    seconds = float(os.environ.get("BENCH_SPEECH_SECONDS", "120"))
    repeats = int(os.environ.get("BENCH_SPEECH_REPEATS", "2"))
    threads = os.cpu_count() or 1
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path, duration, reference = build_audio(Path(tmp), seconds)
        for compute_type in CANDIDATES:
            if compute_type not in supported:
                results[compute_type] = {"supported": False}
                continue
            handler = FasterWhisperASR(MODEL, "cpu", compute_type=compute_type, cpu_threads=threads)
            handler.transcribe(str(path), clip=(0.0, 5.0))  # warm-up
            walls, text = [], ""
            for _ in range(repeats):
                started = time.perf_counter()
                text = handler.transcribe(str(path)).text
                walls.append(time.perf_counter() - started)
            results[compute_type] = {
                "supported": True,
                **figures(duration, min(walls), reference, text),
            }
    return {
        "model": MODEL,
        "audio_seconds": round(duration, 1),
        "threads": threads,
        "supported": sorted(supported),
        "default": default_compute_type("cpu"),
        "compute_types": results,
    }


def report(result: dict) -> str:
    lines = [
        f"{result['model']}, {result['audio_seconds']} s of speech, default: {result['default']}"
    ]
    for name, f in result["compute_types"].items():
        if not f["supported"]:
            lines.append(f"  {name:14s} not supported by this CPU")
        else:
            lines.append(
                f"  {name:14s} {f['x_real_time']:7.2f} x real time  WER {f['wer']:.4f}"
                f"  recall {f['word_recall']:.4f}"
            )
    return "\n".join(lines)


def results_path() -> Path:
    return ROOT / "bench" / "results" / "speech_dtypes.json"
