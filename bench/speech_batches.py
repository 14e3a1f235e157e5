"""Windows per batch on this machine: what ``batch_size: auto`` of faster-whisper rests on.

The first ``BENCH_BATCH_WINDOWS`` (default 16) VAD windows of the audio benchmark's file
(:func:`bench.audio_common.build_audio`, up to 26 s of speech each) through the handler's
``decode_windows`` (int8, beam 5), in batches of 1, 2, 4 and 8:

* one lane of one thread, and one lane of every core (seconds per window);
* as many lanes of one thread as cores, every lane busy (audio seconds per wall second).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from bench.audio_common import MODEL, build_audio
from inferq.devstack import ROOT

BATCHES = (1, 2, 4, 8)


def _windows(folder: Path, count: int) -> list:
    from handlers.speech.audio import decode_audio
    from handlers.speech.pipeline import AudioWindow
    from handlers.speech.vad import speech_windows

    path, _, _ = build_audio(folder, 30 * count)  # windows of up to 26 s
    audio = decode_audio(path)
    return [AudioWindow(audio, w) for w in speech_windows(audio)][:count]


def _decode_all(handler, options, windows, batch: int, lanes: int) -> float:
    """Wall seconds to decode ``windows`` in batches of ``batch`` on ``lanes`` threads."""
    todo = list(range(0, len(windows), batch))
    lock = threading.Lock()

    def lane() -> None:
        while True:
            with lock:
                if not todo:
                    return
                first = todo.pop(0)
            handler.decode_windows(options, windows[first : first + batch])

    started = time.perf_counter()
    threads = [threading.Thread(target=lane) for _ in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def run() -> dict:
    from bench.audio_batching import _Request
    from handlers.speech import FasterWhisperASR

    cores = len(os.sched_getaffinity(0))
    count = int(os.environ.get("BENCH_BATCH_WINDOWS", "16"))
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        windows = _windows(Path(tmp), count)
        audio_s = sum(w.window.seconds for w in windows)
        for name, threads, lanes in (
            ("1 lane, 1 thread", 1, 1),
            (f"1 lane, {cores} threads", cores, 1),
            (f"{cores} lanes, 1 thread each", 1, cores),
        ):
            handler = FasterWhisperASR(
                MODEL, "cpu", cpu_threads=threads, decode_lanes=lanes, batch_size=1
            )
            options = handler.window_options(_Request(), "en", True)
            handler.decode_windows(options, windows[:1])  # warm-up
            row = {}
            for batch in BATCHES:
                wall = _decode_all(handler, options, windows, batch, lanes)
                row[str(batch)] = {
                    "s_per_window": round(wall / len(windows), 3),
                    "x_real_time": round(audio_s / wall, 1),
                }
            rows[name] = row
    return {
        "model": MODEL,
        "windows": len(windows),
        "audio_seconds": round(audio_s, 1),
        "rows": rows,
    }


def report(result: dict) -> str:
    lines = [
        f"{result['model']}: {result['windows']} windows, {result['audio_seconds']} s of speech;"
        " per batch size: seconds per window (x real time)",
        f"  {'':28s}" + "".join(f"{'batch ' + b:>18s}" for b in map(str, BATCHES)),
    ]
    for name, row in result["rows"].items():
        cells = "".join(
            f"{row[str(b)]['s_per_window']:>10.3f} ({row[str(b)]['x_real_time']:>5.1f})"
            for b in BATCHES
        )
        lines.append(f"  {name:28s}{cells}")
    return "\n".join(lines)


def results_path() -> Path:
    return ROOT / "bench" / "results" / "speech_batches.json"
