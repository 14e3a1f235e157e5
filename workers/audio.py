"""Serving ``/v1/audio/transcriptions`` and ``/v1/audio/translations``.

The upload is in the blob store (the job's request names it); a worker copies it to a local
temporary file, shared by every thread of the worker that works on the same job, and deletes
the copy when the last of them is done. Each model has one :class:`ModelGate` per worker: a
handler that is not thread-safe runs one transcription at a time, the most urgent first (a
sync request goes before the next part of a long job).

* **Sync requests** (and jobs no longer than about ``AUDIO_CHUNK_SEC``): the whole file in one
  ``transcribe`` call; each segment becomes a ``delta`` event when the client streams, and
  (jobs) a progress update.
* **Long jobs** fan out. The job's task thread is the *coordinator*: it cuts the file into
  ranges ending at pauses (:func:`plan_ranges`), stores the plan and the list of pending parts
  (:mod:`inferq.audio`), sends one helper task per part on the model's queue, and starts one
  local *puller* thread. A puller (local, or on any worker that received a helper task: at
  most one per job and worker) claims a pending part only once it holds the model's gate,
  transcribes that range (timestamps stay absolute), records the result once, and claims the
  next, until none are left. Meanwhile the coordinator publishes progress after every part
  (audio seconds done, total, fraction, and the segments so far), watches for cancellation
  and for parts claimed by a worker that stopped heart-beating (put back in the list), and
  finally merges the parts in order, renumbering the segments.

Crash safety: every Celery message is acknowledged late. A helper or a puller that dies
loses nothing: its claimed part goes back to the list once its worker's heartbeat expires.
If the coordinator's worker dies, its message is redelivered (after the visibility timeout);
the new coordinator finds the stored plan and the recorded parts and carries on.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import heapq
import inspect
import itertools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers.base import Cancelled, InvalidInput, SpeechResult, SpeechSegment
from handlers.speech.audio import audio_duration, chunk_ranges, decode_audio, find_split_points
from inferq import audio as a
from inferq import protocol as p
from inferq.blobs import Blobs
from inferq.errors import ServiceError
from inferq.openai.transcripts import TranscriptionJob, render
from inferq.settings import instance_name
from workers.jobs import CANCEL_POLL_SEC, CancelWatch, JobContext, as_service_error

if TYPE_CHECKING:  # the registry imports the serving modules
    from workers.registry import LoadedModel

log = logging.getLogger(__name__)

POLL_SEC = 0.2  # how often the coordinator looks at its parts
CLAIM_CHECK_SEC = 2.0  # how often it looks for parts held by a vanished worker
MAX_HELPERS = 64  # helper tasks sent for one job
SPLIT_RATE = 8000  # sampling rate of the windows searched for pauses
TAIL_SLACK_SEC = 60.0  # the last part reads this far past the header's duration (VBR files)


# --- per-model gate -------------------------------------------------------------------------


class ModelGate:
    """At most ``capacity`` holders at once; waiters are served by priority (lower first),
    then in arrival order."""

    def __init__(self, capacity: int = 1):
        self.capacity = capacity
        self._holders = 0
        self._waiting: list[tuple[int, int]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, priority: int, cancelled: Callable[[], bool] = lambda: False) -> Iterator[None]:
        ticket = (int(priority), next(self._order))
        with self._cond:
            heapq.heappush(self._waiting, ticket)
            try:
                while self._holders >= self.capacity or self._waiting[0] != ticket:
                    self._cond.wait(CANCEL_POLL_SEC)
                    if cancelled():
                        raise Cancelled()
            finally:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._cond.notify_all()
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                self._cond.notify_all()


_gates: dict[str, ModelGate] = {}
_gates_lock = threading.Lock()


def gate(model: LoadedModel) -> ModelGate:
    with _gates_lock:
        if model.name not in _gates:
            handler = model.handler
            capacity = 1
            if getattr(handler, "thread_safe", False):
                capacity = max(1, int(getattr(handler, "max_parallelism", 0) or 4))
            _gates[model.name] = ModelGate(capacity)
        return _gates[model.name]


# --- local copies of uploads ----------------------------------------------------------------


@dataclasses.dataclass
class _Copy:
    users: int = 0
    path: Path | None = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class LocalAudio:
    """Blob -> temporary file, downloaded once per worker while any thread uses it."""

    def __init__(self) -> None:
        self._copies: dict[str, _Copy] = {}
        self._lock = threading.Lock()
        self._dir: Path | None = None

    def _directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"inferq-audio-{os.getpid()}-"))
        return self._dir

    @contextlib.contextmanager
    def open(self, blobs: Blobs, blob_id: str, filename: str = "") -> Iterator[Path]:
        with self._lock:
            copy = self._copies.setdefault(blob_id, _Copy())
            copy.users += 1
        try:
            with copy.lock:
                if copy.path is None:
                    copy.path = self._download(blobs, blob_id, filename)
            yield copy.path
        finally:
            with self._lock:
                copy.users -= 1
                if copy.users == 0:
                    del self._copies[blob_id]
                    if copy.path is not None:
                        copy.path.unlink(missing_ok=True)

    def _download(self, blobs: Blobs, blob_id: str, filename: str) -> Path:
        if not blobs.exists(blob_id):
            raise ServiceError(
                500, "the uploaded audio is no longer stored (expired?)", code="audio_lost"
            )
        suffix = Path(filename).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
        path = self._directory() / f"{blob_id}{suffix}"
        with open(path, "wb") as out:
            for piece in blobs.read(blob_id):
                out.write(piece)
        return path

    def cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


local_audio = LocalAudio()
atexit.register(local_audio.cleanup)


# --- planning -------------------------------------------------------------------------------


def split_window(chunk_s: float) -> float:
    return min(10.0, chunk_s / 6)


def plan_ranges(path: str | Path, duration: float, chunk_s: float) -> list[tuple[float, float]]:
    """Ranges of about ``chunk_s`` seconds covering ``[0, duration]``, each cut in the quietest
    stretch within ``split_window(chunk_s)`` of its target (a small window is decoded at
    8 kHz around each target: the whole file is never decoded here)."""
    window = split_window(chunk_s)
    if duration <= chunk_s + window:
        return [(0.0, duration)]
    cuts: list[float] = []
    previous = 0.0
    while duration - previous > chunk_s + window:
        target = previous + chunk_s
        cut = target
        try:
            clip = decode_audio(path, SPLIT_RATE, start=target - window, end=target + window)
        except InvalidInput:
            clip = None
        if clip is not None:
            found = find_split_points(clip, SPLIT_RATE, window, search_window_s=window - 0.05)
            if found:
                cut = target - window + found[0]
        cuts.append(round(cut, 3))
        previous = cut
    return chunk_ranges(duration, cuts)


def probe_duration(path: Path) -> float:
    try:
        duration = audio_duration(path)
    except InvalidInput:
        raise
    except Exception as exc:  # FFmpeg errors while demuxing a damaged file
        raise InvalidInput(
            f"could not read audio: {exc}", param="file", code="invalid_audio"
        ) from exc
    if not duration or duration <= 0:
        raise InvalidInput("the audio contains no samples", param="file", code="invalid_audio")
    return float(duration)


# --- transcription --------------------------------------------------------------------------


def _accepts(handler: Any, name: str) -> bool:
    try:
        return name in inspect.signature(handler.transcribe).parameters
    except (TypeError, ValueError):
        return False


def transcribe(
    model: LoadedModel,
    path: Path,
    job: TranscriptionJob,
    *,
    cancel_event: threading.Event,
    on_segment: Callable[[SpeechSegment], None] | None = None,
    clip: tuple[float, float] | None = None,
) -> SpeechResult:
    handler = model.handler
    kwargs: dict[str, Any] = {
        "language": job.language,
        "prompt": job.prompt,
        "temperature": job.temperature,
        "task": job.task,
        "timestamp_granularity": job.granularity,
        "cancel_event": cancel_event,
    }
    if on_segment is not None and _accepts(handler, "on_segment"):
        kwargs["on_segment"] = on_segment
    if clip is not None:
        kwargs["clip"] = clip
    return handler.transcribe(str(path), **kwargs)


# --- responses ------------------------------------------------------------------------------


def language_name(code: str | None) -> str:
    """OpenAI writes the language's English name ("english"), not its code."""
    if not code:
        return "unknown"
    try:
        from transformers.models.whisper.tokenization_whisper import LANGUAGES
    except ImportError:  # pragma: no cover - workers install transformers
        return code
    return LANGUAGES.get(code, code)


def _render(
    job: TranscriptionJob,
    *,
    language: str | None,
    duration: float,
    segments: list[dict[str, Any]],
    words: list[dict[str, Any]],
) -> bytes:
    return render(
        job, language=language_name(language), duration=duration, segments=segments, words=words
    )


def _segment_dicts(result: SpeechResult) -> list[dict[str, Any]]:
    return [dataclasses.asdict(s) for s in result.segments]


def _compact(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"id": i, "start": s["start"], "end": s["end"], "text": s["text"]}
        for i, s in enumerate(segments)
    ]


def _progress(done: float, total: float, parts_done: int, parts: int, segments) -> dict:
    done = min(done, total)
    return {
        "completed": round(done, 3),
        "total": round(total, 3),
        "fraction": round(done / total, 4) if total > 0 else 0.0,
        "unit": "seconds",
        "chunks_completed": parts_done,
        "chunks_total": parts,
        "segments": segments,
    }


# --- serving a job --------------------------------------------------------------------------


class _Scripts:
    def __init__(self, client):
        self.claim = client.register_script(a.CLAIM_SCRIPT)
        self.record = client.register_script(a.RECORD_SCRIPT)
        self.release = client.register_script(a.RELEASE_SCRIPT)


_scripts: _Scripts | None = None


def scripts(client) -> _Scripts:
    global _scripts
    if _scripts is None:
        _scripts = _Scripts(client)
    return _scripts


def worker_name() -> str:
    """This worker's name in the heartbeat sets (who claimed a part)."""
    from workers import runtime

    for part in getattr(runtime, "_background", []):
        if getattr(part, "worker", None):
            return part.worker
    return instance_name("worker")


def serve_audio(ctx: JobContext, model: LoadedModel) -> bytes:
    """The job's response body (see :func:`inferq.openai.transcripts.render`)."""
    job = TranscriptionJob.parse(ctx.request)
    blobs = Blobs(ctx.runtime.redis)
    with local_audio.open(blobs, job.blob, job.filename) as path:
        duration = None
        if ctx.kind == p.JobKind.JOB:
            duration = probe_duration(path)
            chunk_s = ctx.runtime.settings.audio_chunk_sec
            if duration > chunk_s + split_window(chunk_s) and _accepts(model.handler, "clip"):
                return Coordinator(ctx, job, model, path, duration).run()
        return _serve_whole(ctx, job, model, path, duration)


def _serve_whole(
    ctx: JobContext,
    job: TranscriptionJob,
    model: LoadedModel,
    path: Path,
    duration: float | None = None,
) -> bytes:
    seen: list[dict[str, Any]] = []
    is_job = ctx.kind == p.JobKind.JOB

    def on_segment(segment: SpeechSegment) -> None:
        if job.stream:
            ctx.events.delta(segment.text)
        if is_job:
            seen.append(dataclasses.asdict(segment))
            total = max(duration or 0.0, segment.end, 1e-3)
            compact = _compact(seen)
            stored = _progress(segment.end, total, 0, 1, compact)
            ctx.report_progress(stored, {**stored, "segments": compact[-1:]})
        ctx.is_cancelled()

    with gate(model).hold(ctx.priority, ctx.is_cancelled):
        result = transcribe(model, path, job, cancel_event=ctx.cancel_event, on_segment=on_segment)
    segments = _segment_dicts(result)
    return _render(
        job,
        language=result.language,
        duration=result.duration,
        segments=segments,
        words=[dataclasses.asdict(w) for w in result.words],
    )


# --- fan-out --------------------------------------------------------------------------------

_pullers: set[str] = set()  # jobs with a puller thread on this worker
_pullers_lock = threading.Lock()


def _part_result(result: SpeechResult) -> dict[str, Any]:
    return {
        "segments": _segment_dicts(result),
        "words": [dataclasses.asdict(w) for w in result.words],
        "language": result.language,
        "duration": result.duration,
    }


def pull_parts(
    client,
    job_id: str,
    model: LoadedModel,
    job: TranscriptionJob,
    plan: dict[str, Any],
    cancel_event: threading.Event,
    *,
    priority: int,
) -> None:
    """Claim and transcribe this job's pending parts until none are left (or it stops)."""
    with _pullers_lock:
        if job_id in _pullers:
            return  # this worker already has a puller for the job
        _pullers.add(job_id)
    try:
        _Puller(client, job_id, model, job, plan, cancel_event, priority).run()
    finally:
        with _pullers_lock:
            _pullers.discard(job_id)


class _Puller:
    def __init__(self, client, job_id, model, job, plan, cancel_event, priority):
        self.client = client
        self.job_id = job_id
        self.model = model
        self.job: TranscriptionJob = job
        self.ranges = plan["ranges"]
        self.cancel_event = cancel_event
        self.priority = priority
        self.scripts = scripts(client)
        self.worker = worker_name()
        self.parts_key = a.parts_key(job_id)
        self.claim_keys = [self.parts_key, a.pending_key(job_id), p.job_key(job_id)]
        self.check = CancelWatch(client, job_id, cancel_event)

    def run(self) -> None:
        with contextlib.ExitStack() as stack:
            try:
                path = stack.enter_context(
                    local_audio.open(Blobs(self.client), self.job.blob, self.job.filename)
                )
            except ServiceError:
                return  # the upload is gone: the job is over
            with contextlib.suppress(Cancelled):
                while not self.check():
                    with gate(self.model).hold(self.priority, self.check):
                        index = int(self.scripts.claim(keys=self.claim_keys, args=[self.worker]))
                        if index < 0:
                            return
                        self._run_part(index, path)

    def _run_part(self, index: int, path: Path) -> None:
        start, end = self.ranges[index]
        started = time.perf_counter()
        try:
            result = transcribe(
                self.model,
                path,
                self.job,
                cancel_event=self.cancel_event,
                on_segment=lambda _segment: self.check(),
                clip=(start, end),
            )
            field, value = "r", p.dumps(_part_result(result))
        except InvalidInput as exc:
            if exc.code == "invalid_audio" and index > 0:
                # nothing decodable in this range (past the real end of a VBR file)
                empty = {"segments": [], "words": [], "language": None, "duration": 0.0}
                field, value = "r", p.dumps(empty)
            else:
                field, value = "f", p.dumps(as_service_error(exc).to_record())
        except Cancelled:
            raise
        except Exception as exc:
            log.exception("job %s: part %d failed", self.job_id, index)
            field, value = "f", p.dumps(as_service_error(exc).to_record())
        settled = self.scripts.record(
            keys=[self.parts_key, p.job_key(self.job_id)], args=[index, self.worker, value, field]
        )
        log.info(
            "job %s: part %d (%.1f-%.1f s) %s in %.1fs%s",
            self.job_id,
            index,
            start,
            end,
            "done" if field == "r" else "failed",
            time.perf_counter() - started,
            "" if settled >= 0 else " (not recorded: settled already, or the job is over)",
        )


class Coordinator:
    """Plans a long job, gets its parts done by every worker of the model, merges them."""

    def __init__(
        self,
        ctx: JobContext,
        job: TranscriptionJob,
        model: LoadedModel,
        path: Path,
        duration: float,
    ):
        self.ctx = ctx
        self.job = job
        self.model = model
        self.path = path
        self.duration = duration
        self.client = ctx.runtime.redis
        self.job_id = ctx.job_id
        self.parts_key = a.parts_key(ctx.job_id)
        self.pending_key = a.pending_key(ctx.job_id)
        self.results: dict[int, dict[str, Any]] = {}
        self.local: threading.Thread | None = None

    # -- plan -------------------------------------------------------------------------------

    def _plan(self) -> dict[str, Any]:
        stored = self.client.hget(self.parts_key, "plan")
        if stored is not None:  # a redelivery: carry on with the stored plan
            plan = p.loads(stored)
            log.info("job %s: resuming %d parts", self.job_id, len(plan["ranges"]))
            return plan
        chunk_s = self.ctx.runtime.settings.audio_chunk_sec
        ranges = [list(r) for r in plan_ranges(self.path, self.duration, chunk_s)]
        ranges[-1][1] = round(self.duration + TAIL_SLACK_SEC, 3)
        plan = {
            "ranges": ranges,
            "duration": self.duration,
            "coordinator": worker_name(),
        }
        ttl = max(60, int(self.client.ttl(p.job_key(self.job_id))))
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.parts_key, mapping={"plan": p.dumps(plan), "total": len(ranges), "done": 0})
        pipe.delete(self.pending_key)
        pipe.rpush(self.pending_key, *range(len(ranges)))
        pipe.expire(self.parts_key, ttl)
        pipe.expire(self.pending_key, ttl)
        pipe.execute()
        log.info(
            "job %s: %.1f s of audio in %d parts at %s",
            self.job_id,
            self.duration,
            len(ranges),
            ", ".join(f"{r[0]:.1f}" for r in ranges),
        )
        return plan

    def _send_helpers(self, count: int) -> None:
        from workers.celery_app import app

        for _ in range(min(count, MAX_HELPERS)):
            app.send_task(
                a.TASK_HELP,
                args=[self.job_id],
                queue=p.queue_name(self.model.name),
                priority=int(self.ctx.priority),
            )

    def _start_local_puller(self, plan: dict[str, Any]) -> None:
        self.local = threading.Thread(
            target=pull_parts,
            args=(self.client, self.job_id, self.model, self.job, plan),
            kwargs={"cancel_event": self.ctx.cancel_event, "priority": self.ctx.priority},
            name=f"audio-parts-{self.job_id[-8:]}",
            daemon=True,
        )
        self.local.start()

    # -- run --------------------------------------------------------------------------------

    def run(self) -> bytes:
        plan = self._plan()
        ranges = plan["ranges"]
        total = len(ranges)
        self._collect(ranges, initial=True)  # parts recorded before a redelivery, or none
        self._send_helpers(total - len(self.results))
        self._start_local_puller(plan)
        last_claim_check = time.monotonic()
        settled = len(self.results)
        while len(self.results) < total:
            time.sleep(POLL_SEC)
            if self.ctx.is_cancelled():
                self.ctx.cancel_event.set()
                raise Cancelled()
            done = int(self.client.hget(self.parts_key, "done") or 0)
            if done != settled:
                settled = done
                self._collect(ranges)
            if time.monotonic() - last_claim_check >= CLAIM_CHECK_SEC:
                last_claim_check = time.monotonic()
                self._recover(total, plan)
        return self._merge(ranges)

    def _collect(self, ranges: list[list[float]], *, initial: bool = False) -> None:
        """Read the parts settled since the last look; publish the progress they make."""
        unseen = [i for i in range(len(ranges)) if i not in self.results]
        fields = [f"{kind}:{i}" for i in unseen for kind in ("r", "f")]
        values = self.client.hmget(self.parts_key, fields) if fields else []
        new: list[int] = []
        for name, value in zip(fields, values, strict=True):
            if value is None:
                continue
            if name[0] == "f":
                raise ServiceError.from_record(p.loads(value))
            index = int(name[2:])
            self.results[index] = p.loads(value)
            new.append(index)
        if not new and not initial:
            return
        segments: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        for index in sorted(self.results):
            for segment in self.results[index]["segments"]:
                compact = {"id": len(segments), **{k: segment[k] for k in ("start", "end", "text")}}
                segments.append(compact)
                if index in new:
                    added.append(compact)
        done_seconds = sum(min(ranges[i][1], self.duration) - ranges[i][0] for i in self.results)
        stored = _progress(done_seconds, self.duration, len(self.results), len(ranges), segments)
        self.ctx.report_progress(stored, {**stored, "segments": added})

    def _recover(self, total: int, plan: dict[str, Any]) -> None:
        """Put back parts claimed by workers that stopped heart-beating; keep a puller here."""
        unsettled = [i for i in range(total) if i not in self.results]
        if not unsettled:
            return
        claims = self.client.hmget(self.parts_key, [f"c:{i}" for i in unsettled])
        now = p.now()
        released = 0
        for index, claimant in zip(unsettled, claims, strict=True):
            if claimant is None:
                continue
            score = self.client.zscore(p.workers_key(self.model.name), claimant)
            if score is not None and score > now:
                continue
            if scripts(self.client).release(
                keys=[self.parts_key, self.pending_key], args=[index, claimant]
            ):
                released += 1
                log.warning(
                    "job %s: part %d was held by %s, which is gone; queued again",
                    self.job_id,
                    index,
                    claimant.decode(),
                )
        if released:
            self._send_helpers(released)
        if (self.local is None or not self.local.is_alive()) and self.client.llen(self.pending_key):
            self._start_local_puller(plan)

    def _merge(self, ranges: list[list[float]]) -> bytes:
        segments: list[dict[str, Any]] = []
        words: list[dict[str, Any]] = []
        speech: Counter[str] = Counter()
        first_language = None
        duration = 0.0
        for index in range(len(ranges)):
            part = self.results[index]
            duration += float(part.get("duration") or 0.0)
            first_language = first_language or part.get("language")
            for segment in part["segments"]:
                segment["id"] = len(segments)
                segments.append(segment)
                if part.get("language"):
                    speech[part["language"]] += segment["end"] - segment["start"]
            words.extend(part["words"])
        language = speech.most_common(1)[0][0] if speech else first_language
        return _render(
            self.job,
            language=language,
            duration=duration or self.duration,
            segments=segments,
            words=words,
        )


# --- Celery task bodies ---------------------------------------------------------------------


def run_job(job_id: str) -> None:
    """The task of both audio endpoints: run the job, then drop what it no longer needs."""
    from workers import runtime

    try:
        runtime.jobs.run(job_id, lambda ctx: serve_audio(ctx, runtime.registry.get(ctx.model)))
    finally:
        cleanup(runtime.jobs.redis, job_id)


def cleanup(client, job_id: str) -> None:
    """Once the job is over (or gone): delete its upload, pending list and part results."""
    status, request = client.hmget(p.job_key(job_id), [p.JobField.STATUS, p.JobField.REQUEST])
    if status is not None and status.decode() not in p.TERMINAL_STATUSES:
        return  # still running elsewhere (a redelivered duplicate of a live job)
    if request is not None:
        blob = p.loads(request).get("blob")
        if blob:
            Blobs(client).delete(blob)
    parts = a.parts_key(job_id)
    heavy = [f for f in client.hkeys(parts) if f[:2] in (b"r:", b"c:")]
    pipe = client.pipeline(transaction=False)
    pipe.delete(a.pending_key(job_id))
    if heavy:
        pipe.hdel(parts, *heavy)
    pipe.execute()


def help_with(job_id: str) -> None:
    """A helper task: take parts of a long job on this worker, if any are left."""
    from workers import runtime

    client = runtime.jobs.redis
    status, request_json, priority = client.hmget(
        p.job_key(job_id), [p.JobField.STATUS, p.JobField.REQUEST, p.JobField.PRIORITY]
    )
    plan = client.hget(a.parts_key(job_id), "plan")
    if status != p.JobStatus.RUNNING.value.encode() or request_json is None or plan is None:
        return
    if not client.llen(a.pending_key(job_id)):
        return
    job = TranscriptionJob.parse(p.loads(request_json))
    model = runtime.registry.models.get(job.model)
    if model is None:
        return
    pull_parts(
        client,
        job_id,
        model,
        job,
        p.loads(plan),
        threading.Event(),
        priority=int(priority or p.Priority.JOB),
    )
