"""The audio benchmark's batching figures, (f) (see :mod:`bench.audio`): sixteen short files
through the sync route at once vs one after another, and the ceiling of that ratio on the
machine (the same windows decoded in process in batches of 8 vs one by one)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from bench.audio_common import MODEL, build_audio, figures


def _sync(base: str, path: Path) -> str:
    with open(path, "rb") as f:
        response = httpx.post(
            f"{base}/v1/audio/transcriptions",
            data={"model": MODEL, "response_format": "text"},
            files={"file": (path.name, f, "audio/wav")},
            timeout=600,
        )
    response.raise_for_status()
    return response.text


def speech_batches(metrics_url: str | None) -> dict[str, float]:
    """The worker's speech batches so far (``inferq_worker_speech_batch_*``): how many, and
    the windows and requests they held in all."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"batches": 0.0, "windows": 0.0, "requests": 0.0}
    if metrics_url is None:
        return totals
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text):
        what = family.name.removeprefix("inferq_worker_speech_batch_")
        if what not in ("windows", "requests"):
            continue
        for sample in family.samples:
            if sample.labels.get("model") != MODEL:
                continue
            if sample.name.endswith("_count"):
                totals["batches"] = sample.value
            elif sample.name.endswith("_sum"):
                totals[what] = sample.value
    return totals


def _composition(before: dict[str, float], after: dict[str, float]) -> dict:
    batches = after["batches"] - before["batches"]
    if not batches:
        return {"batches": 0}
    return {
        "batches": int(batches),
        "windows_per_batch": round((after["windows"] - before["windows"]) / batches, 2),
        "requests_per_batch": round((after["requests"] - before["requests"]) / batches, 2),
    }


def sixteen_at_once(
    base: str,
    folder: Path,
    count: int = 16,
    seconds: float = 20.0,
    metrics_url: str | None = None,
) -> dict:
    """(f): ``count`` different files of ``seconds`` through the sync route, one after
    another, then all at once; WER over all of them together, and (with the worker's
    ``metrics_url``) the batches each way: how many, windows and requests per batch."""
    from concurrent.futures import ThreadPoolExecutor

    files = [build_audio(folder, seconds, seed=i, name=f"short{i}") for i in range(count)]
    audio_s = sum(duration for _, duration, _ in files)
    reference = [word for _, _, ref in files for word in ref]
    first = speech_batches(metrics_url)
    started = time.perf_counter()
    sequential = [_sync(base, path) for path, _, _ in files]
    sequential_wall = time.perf_counter() - started
    between = speech_batches(metrics_url)
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        together = list(pool.map(lambda f: _sync(base, f[0]), files))
    together_wall = time.perf_counter() - started
    last = speech_batches(metrics_url)
    return {
        "files": count,
        "seconds_each": seconds,
        "sequential": figures(audio_s, sequential_wall, reference, " ".join(sequential)),
        "at_once": figures(audio_s, together_wall, reference, " ".join(together)),
        "at_once_over_sequential_time": round(together_wall / sequential_wall, 3),
        "same_text": sum(a == b for a, b in zip(sequential, together, strict=True)),
        "batches_sequential": _composition(first, between),
        "batches_at_once": _composition(between, last),
    }


def batching_ceiling(folder: Path, threads: int, count: int = 16, seconds: float = 20.0) -> dict:
    """What batching itself gains on this machine: the windows of (f)'s sixteen files decoded
    by the handler's ``decode_windows`` one at a time vs in batches of 8 (no stack, no VAD
    time): the ceiling of (f)'s at-once / one-after-another ratio."""
    from handlers.speech import FasterWhisperASR
    from handlers.speech.audio import decode_audio
    from handlers.speech.pipeline import AudioWindow
    from handlers.speech.vad import speech_windows

    handler = FasterWhisperASR(MODEL, "cpu", cpu_threads=threads)
    options = handler.window_options(_Request(), "en", True)
    windows = []
    for i in range(count):
        path, _, _ = build_audio(folder, seconds, seed=i, name=f"short{i}")
        audio = decode_audio(path)
        windows += [AudioWindow(audio, w) for w in speech_windows(audio)]
    handler.decode_windows(options, windows[:1])  # warm-up
    started = time.perf_counter()
    for window in windows:
        handler.decode_windows(options, [window])
    one = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(0, len(windows), 8):
        handler.decode_windows(options, windows[i : i + 8])
    eight = time.perf_counter() - started
    return {
        "windows": len(windows),
        "batch_1_s": round(one, 2),
        "batch_8_s": round(eight, 2),
        "batch_8_over_batch_1_time": round(eight / one, 3),
    }


class _Request:
    """The fields of a request that ``window_options`` reads (plain transcription at 0)."""

    task = "transcribe"
    temperatures = (0.0,)
    prompt = None
    word_timestamps = False
