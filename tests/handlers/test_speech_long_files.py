"""Long files. A long job's plan is published part by part as the VAD goes through the file
(block by block), and a plan left half made (its coordinator died) is carried on where it
stopped: the coordinator's planning against a real Redis and the real handler's VAD. Outside
a worker, a handler with several decode lanes decodes that many windows at once."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from handlers.speech.audio import SAMPLE_RATE, decode_audio
from inferq import audio as a
from inferq import protocol as p
from inferq.settings import Settings
from tests.handlers.speech_audio import THREE_SENTENCES, encode_audio, espeak
from workers.audio.coordinator import Coordinator
from workers.audio.planning import probe_duration

SENTENCES = THREE_SENTENCES


@pytest.fixture(scope="module")
def handler(faster_tiny_en):
    return faster_tiny_en


@pytest.fixture(scope="module")
def four_minutes(audio_dir, espeak_available):
    """About 250 s: the three sentences, then 1 s of silence, over and over (three VAD
    blocks, parts of about 30 s)."""
    spoken = [
        decode_audio(espeak(s, audio_dir / f"stream{i}.wav")) for i, s in enumerate(SENTENCES)
    ]
    pause = np.zeros(SAMPLE_RATE, np.float32)
    pieces: list[np.ndarray] = []
    while sum(map(len, pieces)) < 250 * SAMPLE_RATE:
        for speech in spoken:
            pieces += [speech, pause]
    return encode_audio(np.concatenate(pieces), SAMPLE_RATE, audio_dir / "stream.flac")


class Host:
    """The worker's audio service as the coordinator's planning uses it: helper tasks and
    puller starts are recorded, not run."""

    def __init__(self, client):
        from workers.audio.scripts import Scripts

        self.redis = client
        self.scripts = Scripts(client)
        self.settings = Settings(audio_chunk_sec=30.0)
        self.helpers = 0
        self.pullers: list[int] = []  # the plan's part count when a puller was started

    def send_task(self, name, *args, **kwargs):
        assert name == a.TASK_HELP
        self.helpers += 1

    def worker_name(self) -> str:
        return "test-worker"

    def pull_parts(self, job_id, model, job, plan, cancel_event, *, priority):
        self.pullers.append(len(plan["ranges"]))


def coordinator(client, handler, path, job_id: str) -> tuple[Coordinator, Host]:
    host = Host(client)
    client.hset(p.job_key(job_id), mapping={"status": "running"})
    client.expire(p.job_key(job_id), 600)
    ctx = SimpleNamespace(
        job_id=job_id,
        priority=p.Priority.JOB,
        cancel_event=threading.Event(),
        is_cancelled=lambda: False,
    )
    model = SimpleNamespace(name="tiny.en", handler=handler)
    job = SimpleNamespace(vad=None)
    return Coordinator(host, ctx, job, model, path, probe_duration(path)), host


def test_parts_are_published_while_the_rest_is_planned(redis_client, handler, four_minutes):
    """When the VAD starts on its second block, the first block's parts are already pending
    (with their plan, and helpers sent for them) and the plan has no ``total`` yet."""
    seen: list[tuple[int, bool]] = []  # (parts pending, total written) as each block starts
    blocks = handler.plan_window_blocks

    def watched(*args, **kwargs):
        for block in blocks(*args, **kwargs):
            yield block
            parts = a.parts_key("streamed")
            seen.append(
                (redis_client.llen(a.pending_key("streamed")), redis_client.hexists(parts, "total"))
            )

    coord, host = coordinator(redis_client, handler, four_minutes, "streamed")
    coord.model = SimpleNamespace(
        name="tiny.en",
        handler=SimpleNamespace(
            plan_window_blocks=watched,
            plan_windows=handler.plan_windows,
            transcribe=handler.transcribe,
        ),
    )
    plan = coord._plan()
    assert len(seen) >= 3  # three blocks
    assert seen[0][0] >= 2 and not seen[0][1], seen  # parts out, plan still growing
    total = len(plan["ranges"])
    assert total >= 7
    assert int(redis_client.hget(a.parts_key("streamed"), "total")) == total
    assert redis_client.lrange(a.pending_key("streamed"), 0, -1) == [
        str(i).encode() for i in range(total)
    ]
    assert host.helpers == total  # one per part, sent as each was published
    assert host.pullers and host.pullers[0] < total  # this worker's puller started early


def test_a_plan_left_half_made_is_carried_on(redis_client, handler, four_minutes):
    fresh, _ = coordinator(redis_client, handler, four_minutes, "whole")
    whole = fresh._plan()
    # A coordinator that died after publishing its first three parts, two of them claimed.
    half = {**whole, "ranges": whole["ranges"][:3], "windows": whole["windows"][:3]}
    parts, pending = a.parts_key("half"), a.pending_key("half")
    redis_client.delete(parts, pending)
    redis_client.hset(parts, mapping={"plan": p.dumps(half), "done": 0, "c:0": "w", "c:1": "w"})
    redis_client.rpush(pending, 2)
    coord, host = coordinator(redis_client, handler, four_minutes, "half")
    plan = coord._plan()
    assert len(plan["ranges"]) == len(whole["ranges"])
    for mine, theirs in zip(plan["ranges"], whole["ranges"], strict=True):
        assert mine == pytest.approx(theirs, abs=0.1)
    for mine, theirs in zip(plan["windows"], whole["windows"], strict=True):
        assert np.allclose(mine, theirs, atol=0.1)
    total = len(whole["ranges"])
    assert redis_client.lrange(pending, 0, -1) == [str(i).encode() for i in [2, *range(3, total)]]
    assert int(redis_client.hget(parts, "total")) == total
    assert host.helpers == 1 + (total - 3)  # the part still pending, then each new one


def test_outside_a_worker_the_lanes_decode_at_once(four_minutes):
    """``transcribe`` called directly on a handler with two lanes keeps both busy (two
    ``decode_windows`` calls at once), and its transcript is the one-lane transcript."""
    from handlers.speech import FasterWhisperASR

    model = "Systran/faster-whisper-tiny.en"
    # one window per batch: the same batches on one lane as on two, whatever the CPU's auto
    two = FasterWhisperASR(model, "cpu", cpu_threads=1, decode_lanes=2, batch_size=1)
    one = FasterWhisperASR(model, "cpu", cpu_threads=1, decode_lanes=1, batch_size=1)
    lock = threading.Lock()
    at_once = [0, 0]  # now, most

    def counted(options, windows, cancel_event=None):
        with lock:
            at_once[0] += 1
            at_once[1] = max(at_once[1], at_once[0])
        try:
            return decode(options, windows, cancel_event)
        finally:
            with lock:
                at_once[0] -= 1

    decode = two.decode_windows
    two.decode_windows = counted
    together = two.transcribe(str(four_minutes))
    alone = one.transcribe(str(four_minutes))
    assert at_once[1] == 2
    assert together.text == alone.text and len(together.text.split()) > 400
    assert [s.start for s in together.segments] == [s.start for s in alone.segments]


def test_progress_never_goes_back_when_parts_run_past_the_header(
    redis_client, handler, four_minutes
):
    """A file whose header says less than its audio holds (a VBR file without a length
    header): the VAD plans parts past the header's duration, and as they are done the
    progress only grows, up to the total."""
    coord, _ = coordinator(redis_client, handler, four_minutes, "past-header")
    coord.duration = 50.0  # the header's claim; the decoded audio runs on to about 250 s
    ranges = [[0.0, 30.0], [30.0, 60.0], [60.0, 90.0], [90.0, 310.0]]
    reported: list[dict] = []
    coord.ctx.report_progress = lambda stored, event: reported.append(stored)
    parts = a.parts_key("past-header")
    redis_client.delete(parts)
    empty = {"segments": [], "words": [], "language": "en", "duration": 30.0}
    for index in range(len(ranges)):
        redis_client.hset(parts, f"r:{index}", p.dumps(empty))
        coord._collect(ranges)
    completed = [stored["completed"] for stored in reported]
    assert completed == sorted(completed), completed
    assert completed[-1] == reported[-1]["total"] == 50.0
    assert reported[-1]["fraction"] == 1.0


def test_a_puller_waits_for_parts_published_as_it_looks(redis_client, handler, four_minutes):
    """A puller that finds no part pending while the plan grows waits for more, even when the
    coordinator publishes the last parts (and the plan's ``total``) just after it looked:
    it claims them, instead of leaving them for others as if the plan were complete."""
    from workers.audio.parts import NONE_LEFT, NOT_YET, Puller
    from workers.audio.scripts import Scripts

    coord, host = coordinator(redis_client, handler, four_minutes, "growing")
    coord.duration = 60.0
    redis_client.delete(a.parts_key("growing"), a.pending_key("growing"))
    plan: dict = {}
    coord._publish(plan, [((0.0, 30.0), [(1.0, 20.0)])])
    host.scripts = Scripts(redis_client)
    puller = Puller(host, "growing", coord.model, coord.job, p.loads(p.dumps(plan)), None, 0)
    assert puller._claim() == 0
    claim = host.scripts.claim

    def claim_then_publish(**kwargs):  # the coordinator's last block lands right after
        index = claim(**kwargs)
        if not redis_client.hexists(a.parts_key("growing"), "total"):
            coord._publish(plan, [((30.0, 60.0), [(31.0, 50.0)])], last=True)
        return index

    host.scripts.claim = claim_then_publish
    first = puller._claim()
    assert first in (1, NOT_YET), first  # not NONE_LEFT: a part is pending
    assert (first if first == 1 else puller._claim()) == 1
    assert puller._claim() == NONE_LEFT
    assert puller.ranges[1] == [30.0, 60.0 + 60.0]  # the last part's range, read with it


def _injecting(handler, before_first_block):
    """The handler, whose first ``plan_window_blocks`` call runs ``before_first_block`` as
    its first block is found (another coordinator publishing meanwhile)."""
    calls: list[float] = []

    def blocks(path, vad=None, start_s=0.0):
        calls.append(start_s)
        for i, block in enumerate(handler.plan_window_blocks(path, vad=vad, start_s=start_s)):
            if i == 0 and len(calls) == 1:
                before_first_block()
            yield block

    wrapped = SimpleNamespace(
        plan_window_blocks=blocks, plan_windows=handler.plan_windows, transcribe=handler.transcribe
    )
    return wrapped, calls


def _assert_one_plan(client, job_id: str, plan: dict) -> None:
    """The stored plan is ``plan``, complete, and each of its parts was queued once."""
    parts, pending = a.parts_key(job_id), a.pending_key(job_id)
    stored = p.loads(client.hget(parts, "plan"))
    assert stored["ranges"] == plan["ranges"]
    total = len(plan["ranges"])
    assert int(client.hget(parts, "total")) == total
    assert client.lrange(pending, 0, -1) == [str(i).encode() for i in range(total)]
    starts = [r[0] for r in plan["ranges"]]
    assert starts == sorted(starts) and all(
        r[1] <= n[0] + 1e-6 for r, n in zip(plan["ranges"], plan["ranges"][1:], strict=False)
    )


def test_a_second_coordinator_planning_at_once_takes_the_first_ones_plan(
    redis_client, handler, four_minutes
):
    """A job redelivered while its first coordinator still plans (a live worker that missed
    its lease): both start on an empty plan, the first publishes its first parts, then the
    second tries to. The second is refused, waits for the first one's plan and takes it; no
    part is queued twice and the pending list is not reset under the first one's pullers."""
    job = "twice"
    redis_client.delete(a.parts_key(job), a.pending_key(job))
    first, _ = coordinator(redis_client, handler, four_minutes, job)
    second, _ = coordinator(redis_client, handler, four_minutes, job)
    go_on = threading.Event()  # the first coordinator's VAD goes on past its first block

    def held_blocks(path, vad=None, start_s=0.0):
        for i, block in enumerate(handler.plan_window_blocks(path, vad=vad, start_s=start_s)):
            if i == 1:
                go_on.wait(60)
            yield block

    first.model.handler = SimpleNamespace(
        plan_window_blocks=held_blocks,
        plan_windows=handler.plan_windows,
        transcribe=handler.transcribe,
    )
    planned: list[dict] = []
    first_thread = threading.Thread(target=lambda: planned.append(first._plan()))

    def first_publishes_first():
        first_thread.start()
        deadline = time.monotonic() + 60
        while not redis_client.llen(a.pending_key(job)) and time.monotonic() < deadline:
            time.sleep(0.01)
        threading.Timer(1.0, go_on.set).start()  # after the second one's first publish

    second.model.handler, _ = _injecting(handler, first_publishes_first)
    plan = second._plan()
    first_thread.join(60)
    assert plan == planned[0] and len(plan["ranges"]) >= 7
    _assert_one_plan(redis_client, job, plan)


def test_a_plan_another_coordinator_left_growing_is_carried_on(
    redis_client, handler, four_minutes, monkeypatch
):
    """The other coordinator published one part and then stopped (its worker died): after
    ``PLAN_STALL_SEC`` without growth this one carries the plan on from that part's end."""
    from workers.audio import coordinator as coordinator_module

    monkeypatch.setattr(coordinator_module, "PLAN_STALL_SEC", 0.5)
    job = "stalled"
    redis_client.delete(a.parts_key(job), a.pending_key(job))
    first, _ = coordinator(redis_client, handler, four_minutes, job)
    second, _ = coordinator(redis_client, handler, four_minutes, job)
    whole = first._plan()  # what one coordinator alone plans (then forgotten)
    redis_client.delete(a.parts_key(job), a.pending_key(job))
    head = [(tuple(whole["ranges"][0]), [tuple(w) for w in whole["windows"][0]])]
    second.model.handler, calls = _injecting(handler, lambda: first._publish({}, head))
    plan = second._plan()
    assert len(calls) == 2 and calls[1] == pytest.approx(whole["ranges"][0][1])
    assert plan["ranges"][0] == whole["ranges"][0]
    for mine, theirs in zip(plan["ranges"], whole["ranges"], strict=True):
        assert mine == pytest.approx(theirs, abs=0.1)
    _assert_one_plan(redis_client, job, plan)


def test_progress_segments_only_append_when_parts_finish_out_of_order(
    redis_client, handler, four_minutes
):
    """Parts finish in the order 2, 0, 1: the progress' segments are always the transcript
    from the file's start on, and each event's new segments carry on from the last ones (ids
    never reused, times in order), while the seconds done count every finished part."""
    coord, _ = coordinator(redis_client, handler, four_minutes, "out-of-order")
    coord.duration = 90.0
    ranges = [[0.0, 30.0], [30.0, 60.0], [60.0, 90.0]]
    events: list[dict] = []
    stored_each: list[dict] = []

    def report(stored, event):
        stored_each.append(stored)
        events.append(event)

    coord.ctx.report_progress = report
    parts = a.parts_key("out-of-order")
    redis_client.delete(parts)
    for index in (2, 0, 1):
        start = ranges[index][0]
        segments = [
            {"start": start + 1, "end": start + 9, "text": f" part {index} first"},
            {"start": start + 11, "end": start + 19, "text": f" part {index} second"},
        ]
        result = {"segments": segments, "words": [], "language": "en", "duration": 30.0}
        redis_client.hset(parts, f"r:{index}", p.dumps(result))
        coord._collect(ranges)
    assert [s["completed"] for s in stored_each] == [30.0, 60.0, 90.0]
    assert [len(s["segments"]) for s in stored_each] == [0, 2, 6]
    streamed = [segment for event in events for segment in event["segments"]]
    assert [s["id"] for s in streamed] == list(range(6))
    assert [s["text"] for s in streamed] == [
        f" part {i} {which}" for i in range(3) for which in ("first", "second")
    ]
    assert streamed == stored_each[-1]["segments"]
