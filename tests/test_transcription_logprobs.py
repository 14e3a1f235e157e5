"""``include[]=logprobs`` on transcriptions with the official openai client: the json response
carries OpenAI's ``logprobs`` ({token, logprob, bytes} per text token), here from WhisperASR's
generate scores on the real tiny.en weights; the tokens join to the text."""

from __future__ import annotations

import math

import httpx
import pytest

from tests.handlers.speech_audio import FOX_SENTENCE, espeak, spoken_words

WHISPER = "tiny-en-whisper-hf"


@pytest.fixture(scope="module")
def client(stack, openai_client):
    stack.start_worker([WHISPER])
    return openai_client


@pytest.fixture(scope="module")
def fox(tmp_path_factory):
    return espeak(FOX_SENTENCE, tmp_path_factory.mktemp("fox") / "fox.wav")


def check_logprobs(text: str, logprobs: list) -> None:
    assert logprobs, "no logprobs"
    assert "".join(e["token"] for e in logprobs).strip() == text
    # (the client types bytes as floats)
    assert bytes(int(b) for e in logprobs for b in e["bytes"]).decode().strip() == text
    assert all(e["logprob"] <= 0 and math.isfinite(e["logprob"]) for e in logprobs)
    # a clear sentence: most tokens are likely, not uniformly guessed
    assert sum(e["logprob"] for e in logprobs) / len(logprobs) > -1.5


def test_json_transcription_with_logprobs(client, fox):
    with fox.open("rb") as audio:
        result = client.audio.transcriptions.create(
            model=WHISPER, file=audio, include=["logprobs"], response_format="json"
        )
    assert len(spoken_words(result.text) & spoken_words(FOX_SENTENCE)) >= 6, result.text
    check_logprobs(result.text, [e.model_dump() for e in result.logprobs])
    with fox.open("rb") as audio:
        plain = client.audio.transcriptions.create(model=WHISPER, file=audio)
    assert plain.text == result.text and getattr(plain, "logprobs", None) is None


def test_streamed_done_event_carries_the_logprobs(client, fox, stack):
    with fox.open("rb") as audio:
        events = list(
            client.audio.transcriptions.create(
                model=WHISPER, file=audio, include=["logprobs"], stream=True
            )
        )
    done = events[-1]
    assert done.type == "transcript.text.done"
    check_logprobs(done.text, [e.model_dump() for e in done.logprobs])


def test_verbose_json_never_shows_them(client, fox, stack):
    with fox.open("rb") as audio:
        response = httpx.post(
            f"{stack.v1}/audio/transcriptions",
            files={"file": ("fox.wav", audio, "audio/wav")},
            data={"model": WHISPER, "response_format": "verbose_json"},
            timeout=600,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "logprobs" not in body and all("logprobs" not in s for s in body["segments"])
