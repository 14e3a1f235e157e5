"""Audio decoding and long-file splitting with PyAV (bundled FFmpeg; no system ffmpeg needed).

Anything FFmpeg's bundled demuxers and decoders read works: wav, flac, mp3, m4a/aac,
ogg (vorbis/opus), webm (opus), and the audio track of video files.
"""

from __future__ import annotations

import itertools
import os
from typing import BinaryIO

import numpy as np

from handlers.base import InvalidInput

SAMPLE_RATE = 16000

AudioSource = str | os.PathLike | BinaryIO


def _open(source: AudioSource):
    import av

    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise FileNotFoundError(f"audio file not found: {source}")
    try:
        return av.open(source if not isinstance(source, os.PathLike) else os.fspath(source), "r")
    except av.error.FFmpegError as exc:
        raise InvalidInput(
            f"could not read audio: {exc}", param="file", code="invalid_audio"
        ) from exc


def _audio_stream(container):
    if not container.streams.audio:
        raise InvalidInput("the file has no audio stream", param="file", code="invalid_audio")
    return container.streams.audio[0]


def decode_audio(
    source: AudioSource,
    sampling_rate: int = SAMPLE_RATE,
    *,
    start: float = 0.0,
    end: float | None = None,
) -> np.ndarray:
    """Decode ``source`` (path or binary file object) to mono float32 at ``sampling_rate``.

    ``start``/``end`` (seconds) decode only that range: the demuxer seeks near ``start``, so
    a clip of a long file costs about as much as the clip itself (cut accuracy: a few ms).
    Raises :class:`InvalidInput` (code ``invalid_audio``) for unreadable, empty or
    audio-less input and ``FileNotFoundError`` for a missing path.
    """
    import av

    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"bad audio range: start={start}, end={end}")
    chunks: list[np.ndarray] = []
    first_frame_time: float | None = None
    try:
        with _open(source) as container:
            stream = _audio_stream(container)
            if start > 0:
                try:
                    container.seek(int(start / stream.time_base), stream=stream, backward=True)
                except av.error.FFmpegError:
                    container.seek(0)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
            for frame in container.decode(stream):
                frame_time = frame.time
                if first_frame_time is None:
                    first_frame_time = frame_time if frame_time is not None else 0.0
                if end is not None and frame_time is not None and frame_time > end:
                    break
                for resampled in resampler.resample(frame):
                    chunks.append(resampled.to_ndarray().reshape(-1))
            for resampled in resampler.resample(None):
                chunks.append(resampled.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        raise InvalidInput(
            f"could not decode audio: {exc}", param="file", code="invalid_audio"
        ) from exc

    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, "f4")
    if start > 0 or end is not None:
        origin = first_frame_time or 0.0
        skip = max(0, round((start - origin) * sampling_rate)) if start > 0 else 0
        stop = None if end is None else max(skip, round((end - origin) * sampling_rate))
        audio = audio[skip:stop]
    if audio.size == 0:
        raise InvalidInput("the audio contains no samples", param="file", code="invalid_audio")
    return np.ascontiguousarray(audio)


def audio_duration(source: str | os.PathLike) -> float:
    """Duration in seconds from the container header; demuxes (no decoding) when it is missing."""
    with _open(source) as container:
        stream = _audio_stream(container)
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / 1_000_000
        end = 0.0
        for packet in container.demux(stream):
            if packet.pts is not None and packet.time_base is not None:
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        return end


def find_split_points(
    audio: np.ndarray,
    sampling_rate: int,
    target_chunk_s: float,
    *,
    search_window_s: float | None = None,
    frame_s: float = 0.025,
    min_silence_s: float = 0.3,
) -> list[float]:
    """Cut times (seconds) near every ``target_chunk_s`` that fall in the quietest stretch.

    The n-th cut is searched within ``search_window_s`` (default ``min(10, target / 6)``) of
    the previous cut plus ``target_chunk_s``, so every chunk lasts
    ``target_chunk_s ± search_window_s``, the last one at most ``target + window``. The
    cut lands in the middle of the ``min_silence_s`` stretch with the lowest RMS energy;
    among equally quiet candidates the one nearest the target wins. Any sampling rate
    works: decoding at 4-8 kHz is enough to find pauses and keeps long files small.
    """
    if target_chunk_s <= 0:
        raise ValueError("target_chunk_s must be positive")
    window_s = min(10.0, target_chunk_s / 6) if search_window_s is None else search_window_s
    frame = max(1, round(frame_s * sampling_rate))
    n_frames = len(audio) // frame
    duration = len(audio) / sampling_rate
    if n_frames == 0 or duration <= target_chunk_s + window_s:
        return []
    frames = np.asarray(audio[: n_frames * frame], dtype=np.float32).reshape(n_frames, frame)
    energy = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    width = max(1, round(min_silence_s / frame_s))
    smooth = np.convolve(energy, np.ones(width) / width, mode="same")
    seconds_per_frame = frame / sampling_rate

    cuts: list[float] = []
    previous = 0.0
    while duration - previous > target_chunk_s + window_s:
        target = previous + target_chunk_s
        lo = max(
            int((target - window_s) / seconds_per_frame), int(previous / seconds_per_frame) + 1
        )
        hi = min(int((target + window_s) / seconds_per_frame), n_frames - 1)
        if hi <= lo:
            break
        candidates = smooth[lo : hi + 1]
        quietest = candidates.min()
        tolerance = quietest * 0.05 + 1e-7
        near_silent = np.flatnonzero(candidates <= quietest + tolerance) + lo
        best = near_silent[np.argmin(np.abs((near_silent + 0.5) * seconds_per_frame - target))]
        cut = round(float((best + 0.5) * seconds_per_frame), 3)
        cuts.append(cut)
        previous = cut
    return cuts


def chunk_ranges(duration: float, cut_points: list[float]) -> list[tuple[float, float]]:
    """``[(0, c1), (c1, c2), ..., (cn, duration)]`` for the cuts of :func:`find_split_points`."""
    bounds = [0.0, *cut_points, duration]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
