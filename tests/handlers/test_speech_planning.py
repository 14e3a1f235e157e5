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
from tests.handlers.speech_audio import (
    THREE_SENTENCES,
    encode_audio,
    espeak,
    normalise,
    words_kept,
)
from workers.audio.planning import PartPlanner, group_windows

SENTENCES = THREE_SENTENCES


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


def test_parts_published_block_by_block_are_those_grouped_at_once():
    """The coordinator groups windows as the VAD yields them, block by block: whatever the
    blocks, the parts are the ones the whole list gives at once."""
    windows = [(0.5, 20.0), (21.0, 45.0), (46.0, 50.0), (52.0, 80.0), (90.0, 95.0), (99, 120)]
    at_once = group_windows(windows, 130.0, 60.0)
    for cuts in ([], [0], [2], [1, 3], [0, 0, 5], [1, 2, 3, 4, 5]):
        planner = PartPlanner(60.0)
        parts, begin = [], 0
        for cut in [*cuts, len(windows)]:
            parts += planner.add(windows[begin:cut])
            begin = max(begin, cut)
        parts += planner.finish(130.0)
        assert ([r for r, _ in parts], [g for _, g in parts]) == at_once, cuts


@pytest.fixture(scope="session")
def sentences_audio(audio_dir, espeak_available):
    """The three sentences one after another, no pauses (about 10 s of speech)."""
    return np.concatenate(
        [decode_audio(espeak(s, audio_dir / f"block{i}.wav")) for i, s in enumerate(SENTENCES)]
    )


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def seconds_of(windows) -> list[tuple[float, float]]:
    return [(w.start / SAMPLE_RATE, w.end / SAMPLE_RATE) for w in windows]


def test_the_vad_goes_block_by_block_and_yields_windows_before_the_end(
    sentences_audio, monkeypatch
):
    """A long job's first parts can start while the rest is planned: the first windows come
    after the VAD has heard the first block only. Speech running across a block's end is
    heard again, whole, with the next block (never cut there), and the windows match one
    VAD pass over the whole file."""
    from handlers.speech import vad

    speech = sentences_audio
    audio = np.concatenate(
        [
            speech,
            silence(40),
            speech,  # a window that later speech cannot join (more than 26 s apart)
            silence(vad.BLOCK_SECONDS - 5 - 40 - 2 * len(speech) / SAMPLE_RATE),
            speech,  # from 5 s before the first block's end, past it
            speech,
            silence(60),
            speech,  # in the second block
            silence(5),
        ]
    )
    heard: list[int] = []
    one_pass = vad.speech_regions

    def recording(samples, parameters=None):
        heard.append(len(samples))
        return one_pass(samples, parameters)

    monkeypatch.setattr(vad, "speech_regions", recording)
    blocks = vad.window_blocks(audio)
    first = next(blocks)
    assert heard == [vad.BLOCK_SECONDS * SAMPLE_RATE]  # one block heard so far
    assert first and seconds_of(first)[0][0] < 1.0  # the first windows, final
    assert seconds_of(first)[-1][1] < vad.BLOCK_SECONDS - vad.BLOCK_MARGIN_SECONDS
    rest = [w for block in blocks for w in block]
    assert len(heard) == 2 and sum(heard) < len(audio) + 10 * SAMPLE_RATE  # heard again: < 10 s
    windows = seconds_of(first + rest)
    # the speech across the first block's end is one window, from its start to its end
    across = [w for w in windows if w[0] < vad.BLOCK_SECONDS < w[1]]
    assert len(across) == 1, windows
    start = vad.BLOCK_SECONDS - 5
    assert across[0][0] == pytest.approx(start, abs=0.5)
    assert across[0][1] == pytest.approx(start + 2 * len(speech) / SAMPLE_RATE, abs=0.5)
    # ordered, not overlapping, at most a window long, and as one pass over the file finds
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(windows))
    assert all(end - begin <= vad.WINDOW_AUDIO_SECONDS for begin, end in windows)
    monkeypatch.setattr(vad, "speech_regions", one_pass)
    whole = seconds_of(vad.merge_regions(vad.speech_regions(audio)))
    assert len(windows) == len(whole)
    for mine, theirs in zip(windows, whole, strict=True):
        assert mine == pytest.approx(theirs, abs=0.1)
