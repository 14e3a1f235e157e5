"""What the routes transcribe, checked against the script, through the real stack.

Continuous speech (no pauses) and one sentence said over and over, through the sync route
(the official client) and as a job (fanned out into parts of ``CHUNK_SEC``): >= 90 % of the
script's words in order (jiwer's alignment hits), segments ordered, never overlapping and
inside the file; noise gives (almost) no text. These are the cases where the sequential
decoder returned a quarter of the speech with a 200.
"""

from __future__ import annotations

import itertools
import re

import jiwer
import numpy as np
import pytest

from tests.audio.conftest import TINY_EN, submit_job, wait_job
from tests.handlers.speech_audio import encode_audio, espeak

CONTINUOUS = (
    "A journey of a thousand miles begins with a single step. Please remember to close the "
    "window before you leave the house. The passengers waited patiently on the platform near "
    "the river. Our train was delayed because of a signal failure. The children played "
    "football in the park until the sun went down. "
)
REPEATED = (
    "The committee approved the new budget for the city library after a long discussion "
    "about the costs of repairs."
)


def words_kept(script: str, transcript: str) -> float:
    def normalise(text: str) -> str:
        return " ".join(re.findall(r"[a-z']+", text.lower()))

    alignment = jiwer.process_words(normalise(script), normalise(transcript))
    return alignment.hits / len(normalise(script).split())


def assert_segments_inside(result: dict) -> None:
    segments = result["segments"]
    assert segments
    assert [s["id"] for s in segments] == list(range(len(segments)))
    for previous, current in itertools.pairwise(segments):
        assert previous["end"] <= current["start"] + 1e-3, (previous, current)
    assert all(0 <= s["start"] <= s["end"] <= result["duration"] + 1e-3 for s in segments)
    assert result["text"] == "".join(s["text"] for s in segments).strip()


@pytest.fixture(scope="module")
def continuous_2min(audio_dir):
    """About two minutes of speech with no pauses."""
    script = CONTINUOUS * 8
    return script, espeak(script, audio_dir / "continuous.wav", words_per_minute=190)


@pytest.fixture(scope="module")
def repeated_30(audio_dir):
    script = " ".join([REPEATED] * 30)
    return script, espeak(script, audio_dir / "repeated.wav")


@pytest.fixture(scope="module")
def noise_60s(audio_dir):
    rng = np.random.default_rng(3)
    audio = (rng.standard_normal(60 * 16000) * 0.03).astype(np.float32)
    return encode_audio(audio, 16000, audio_dir / "noise60.wav")


@pytest.mark.parametrize("speech", ["continuous_2min", "repeated_30"])
def test_sync_route_keeps_the_speech(client, request, speech):
    script, path = request.getfixturevalue(speech)
    with open(path, "rb") as f:
        result = client.audio.transcriptions.create(
            model=TINY_EN, file=f, response_format="verbose_json"
        ).model_dump()
    assert result["duration"] > 100
    assert_segments_inside(result)
    assert words_kept(script, result["text"]) >= 0.9, result["text"]
    assert result["segments"][-1]["end"] >= result["duration"] - 5


@pytest.mark.parametrize("speech", ["continuous_2min", "repeated_30"])
def test_job_route_keeps_the_speech_across_its_parts(stack, audio_worker, request, speech):
    script, path = request.getfixturevalue(speech)
    job = wait_job(stack, submit_job(stack, path, response_format="verbose_json")["id"])
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert job["progress"]["chunks_total"] >= 3  # fanned out
    assert_segments_inside(result)
    assert words_kept(script, result["text"]) >= 0.9, result["text"]
    assert result["segments"][0]["start"] < 2
    assert result["segments"][-1]["end"] >= result["duration"] - 5


def test_noise_gives_no_text(client, noise_60s):
    with open(noise_60s, "rb") as f:
        result = client.audio.transcriptions.create(
            model=TINY_EN, file=f, response_format="verbose_json"
        ).model_dump()
    assert len(result["text"].split()) <= 3, result["text"]
    assert result["duration"] == pytest.approx(60, abs=0.1)
