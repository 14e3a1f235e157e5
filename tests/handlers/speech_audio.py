"""Audio for the speech handler tests: tones, espeak-ng speech and PyAV encoding."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np

from handlers.base import SpeechResult

FOX_SENTENCE = "The quick brown fox jumps over the lazy dog."
THREE_SENTENCES = [  # the long-file tests' speech
    FOX_SENTENCE,
    "Please remember to close the window before you leave the house.",
    "The children played football in the park until the sun went down.",
]

# suffix -> (container format, codec, codec sample rate)
AUDIO_FORMATS = {
    ".wav": ("wav", "pcm_s16le", 16000),
    ".flac": ("flac", "flac", 16000),
    ".mp3": ("mp3", "libmp3lame", 16000),
    ".m4a": ("ipod", "aac", 16000),
    ".ogg": ("ogg", "libopus", 48000),
    ".webm": ("webm", "libopus", 48000),
}


def encode_audio(samples: np.ndarray, sampling_rate: int, path: Path) -> Path:
    """Write mono float samples to ``path`` with PyAV; the format follows the suffix."""
    import av

    container_format, codec, codec_rate = AUDIO_FORMATS[path.suffix]
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=codec_rate)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=codec_rate)
        pcm = np.clip(samples, -1, 1).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        frame.sample_rate = sampling_rate
        for resampled in resampler.resample(frame):
            resampled.pts = None
            container.mux(stream.encode(resampled))
        for resampled in resampler.resample(None):
            resampled.pts = None
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))
    return path


def tone(seconds: float, sampling_rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * sampling_rate)) / sampling_rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def espeak_voice(voice: str, text: str, path: Path) -> Path:
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return path


def espeak(text: str, path: Path, words_per_minute: int = 175) -> Path:
    subprocess.run(
        ["espeak-ng", "-s", str(words_per_minute), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    return path


FOX_WORDS = re.findall(r"[a-z]+", FOX_SENTENCE.lower())


def spoken_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def assert_well_formed(result: SpeechResult, *, offset: float = 0.0, words: bool) -> None:
    assert isinstance(result, SpeechResult)
    assert isinstance(result.language, str) and result.language
    assert result.duration > 0
    assert result.text == "".join(s.text for s in result.segments).strip()
    end_of_audio = offset + result.duration + 0.05
    previous_start = offset
    for index, segment in enumerate(result.segments):
        assert segment.id == index
        assert offset - 1e-6 <= segment.start <= segment.end <= end_of_audio
        assert segment.start >= previous_start - 1e-6
        assert segment.text.strip()
        previous_start = segment.start
    if not words:
        assert result.words == []
        return
    if result.segments:
        assert result.words
    previous = offset
    for word in result.words:
        assert word.word == word.word.strip() and word.word
        assert previous - 1e-6 <= word.start <= word.end <= end_of_audio
        assert any(
            s.start - 1e-6 <= word.start and word.end <= s.end + 1e-6 for s in result.segments
        )
        previous = word.start


REPEATED_SENTENCE = (
    "The committee approved the new budget for the city library after a long discussion "
    "about the costs of repairs."
)
CONTINUOUS_SCRIPT = (  # words tiny.en knows: tests measure lost speech, not its vocabulary
    "A journey of a thousand miles begins with a single step. Please remember to close the "
    "window before you leave the house. The passengers waited patiently on the platform near "
    "the river. Our train was delayed because of a signal failure. The children played "
    "football in the park until the sun went down. "
)


def normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z']+", text.lower()))


def words_kept(script: str, transcript: str) -> float:
    """The share of the script's words found, in order, in the transcript."""
    import jiwer

    alignment = jiwer.process_words(normalise(script), normalise(transcript))
    return alignment.hits / len(normalise(script).split())
