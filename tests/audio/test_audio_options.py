"""The transcription options OpenAI clients send: ``chunking_strategy`` (mapped onto the
pipeline's VAD), ``include[]``, the bracketed names clients flatten objects and lists into,
and ``usage`` on the streamed ``transcript.text.done``."""

from __future__ import annotations

import shutil

import httpx
import openai
import pytest

from tests.audio.conftest import SENTENCES, TINY_EN, submit_job, wait_job, words_of
from tests.handlers.speech_audio import FOX_SENTENCE

pytestmark = [
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt)"),
    pytest.mark.timeout(900),
]


def _transcribe(client, path, **kwargs):
    with open(path, "rb") as f:
        return client.audio.transcriptions.create(model=TINY_EN, file=f, **kwargs)


def test_server_vad_settings_reach_the_vad(client, fox_wav):
    """The official client flattens the object into chunking_strategy[type], [threshold], ...
    A threshold no frame reaches finds no speech, so nothing is decoded; 'auto' and a
    server_vad object with OpenAI's defaults transcribe the sentence."""
    fox = words_of(FOX_SENTENCE)
    auto = _transcribe(client, fox_wav, chunking_strategy="auto")
    assert len(words_of(auto.text) & fox) >= 6, auto.text
    vad = _transcribe(client, fox_wav, chunking_strategy={"type": "server_vad"})
    assert len(words_of(vad.text) & fox) >= 6, vad.text
    tuned = _transcribe(
        client,
        fox_wav,
        chunking_strategy={
            "type": "server_vad",
            "threshold": 0.3,
            "prefix_padding_ms": 100,
            "silence_duration_ms": 500,
        },
    )
    assert len(words_of(tuned.text) & fox) >= 6, tuned.text
    deaf = _transcribe(client, fox_wav, chunking_strategy={"type": "server_vad", "threshold": 1})
    assert deaf.text == ""


def test_server_vad_reaches_a_job_too(stack, client, fox_wav):
    deaf = submit_job(
        stack, fox_wav, **{"chunking_strategy": '{"type": "server_vad", "threshold": 1.0}'}
    )
    job = wait_job(stack, deaf["id"])
    assert job["status"] == "succeeded" and job["result"]["text"] == ""


def test_bracketed_and_indexed_names_are_parsed(stack, client, fox_wav):
    """What other clients send: object members and indexed list items as their own fields."""

    def post(**data):
        with open(fox_wav, "rb") as f:
            return httpx.post(
                f"{stack.v1}/audio/transcriptions",
                data={"model": TINY_EN, **data},
                files={"file": ("fox.wav", f)},
                timeout=120,
            )

    ok = post(
        **{
            "chunking_strategy[type]": "server_vad",
            "chunking_strategy[silence_duration_ms]": "300",
            "include[0]": "logprobs",
        }
    )
    assert ok.status_code == 200, ok.text
    assert len(words_of(ok.json()["text"]) & words_of(FOX_SENTENCE)) >= 6
    for data, param in [
        ({"chunking_strategy[type]": "client_vad"}, "chunking_strategy"),
        ({"chunking_strategy[type]": "server_vad", "chunking_strategy[pad]": "1"}, None),
        ({"chunking_strategy": "fastest"}, "chunking_strategy"),
        ({"unknown[type]": "x"}, "unknown[type]"),
        ({"include[]": "segments"}, "include"),
    ]:
        response = post(**data)
        assert response.status_code == 400, (data, response.text)
        assert response.json()["error"]["param"] == (param or "chunking_strategy"), data


def test_include_logprobs_is_accepted_with_json_only(client, fox_wav):
    """As OpenAI does for whisper-1: accepted, and no token logprobs in the body
    (faster-whisper exposes no token scores; WhisperASR gives them:
    tests/test_transcription_logprobs.py); with a format other than json it is a 400."""
    result = _transcribe(client, fox_wav, include=["logprobs"])
    assert len(words_of(result.text) & words_of(FOX_SENTENCE)) >= 6
    assert result.logprobs is None
    with pytest.raises(openai.BadRequestError) as caught:
        _transcribe(client, fox_wav, include=["logprobs"], response_format="verbose_json")
    assert caught.value.body["param"] == "include"


def test_streamed_done_event_carries_usage(client, three_sentences):
    with open(three_sentences, "rb") as f:
        events = list(client.audio.transcriptions.create(model=TINY_EN, file=f, stream=True))
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert len(words_of(done.text) & words_of(SENTENCES[1])) >= 5
    assert done.usage.type == "duration"
    assert done.usage.seconds == pytest.approx(three_sentences.stat().st_size / 32000, abs=1)


def test_json_fields_too_deep_or_not_unicode_are_400s(stack, client, fox_wav):
    """``metadata`` and ``chunking_strategy`` are JSON inside form fields: nesting past the
    JSON parser's depth raised a RecursionError, a 500 (a lone surrogate was a 400 already)."""
    for data, param in [
        ({"metadata": "[" * 5000}, "metadata"),
        ({"metadata": '{"k": "\\ud800"}'}, "metadata"),
        ({"chunking_strategy": '{"type": ' * 5000}, "chunking_strategy"),
    ]:
        with open(fox_wav, "rb") as f:
            response = httpx.post(
                f"{stack.v1}/jobs/audio/transcriptions",
                data={"model": TINY_EN, **data},
                files={"file": ("fox.wav", f)},
                timeout=120,
            )
        assert response.status_code == 400, (data, response.text)
        assert response.json()["error"]["param"] == param, data
