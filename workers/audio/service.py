"""The audio family's executor: one :class:`AudioService` per worker serves every audio job
(sync, job API, and the helper tasks of long jobs) and owns the worker's audio state."""

from __future__ import annotations

import atexit
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers.base import SpeechSegment, batches_windows, transcribe_accepts
from inferq import audio as a
from inferq import protocol as p
from inferq.blobs import Blobs
from inferq.openai.transcripts import TranscriptionJob
from inferq.settings import Settings
from workers.audio.batcher import WindowBatcher
from workers.audio.coordinator import Coordinator
from workers.audio.gate import ModelGate, ModelGates
from workers.audio.local_copy import LocalAudio
from workers.audio.parts import Puller, cleanup
from workers.audio.planning import probe_duration, split_window
from workers.audio.scripts import Scripts
from workers.audio.transcribe import (
    compact,
    progress,
    render_body,
    segment_dicts,
    transcribe,
    word_dicts,
)
from workers.jobs import JobContext, JobRuntime

if TYPE_CHECKING:
    from workers.loaded import LoadedModel
    from workers.registry import ModelRegistry


class AudioService:
    """Serves audio jobs on one worker.

    ``send_task`` sends a Celery task by name (the coordinator's helper tasks);
    ``worker_name`` is this worker's name in the heartbeat sets (who claimed a part).
    """

    def __init__(
        self,
        jobs: JobRuntime,
        registry: ModelRegistry,
        settings: Settings,
        *,
        send_task: Callable[..., Any],
        worker_name: Callable[[], str],
    ):
        self.jobs = jobs
        self.registry = registry
        self.settings = settings
        self.redis = jobs.redis
        self.send_task = send_task
        self.worker_name = worker_name
        self.local = LocalAudio()
        self.scripts = Scripts(self.redis)
        self._gates = ModelGates()
        self._batchers: dict[str, WindowBatcher | None] = {}
        self._batchers_lock = threading.Lock()
        self._pullers: set[str] = set()  # jobs with a puller thread on this worker
        self._pullers_lock = threading.Lock()
        atexit.register(self.local.cleanup)

    def gate(self, model: LoadedModel) -> ModelGate:
        return self._gates.of(model.name, model.handler)

    def batcher(self, model: LoadedModel) -> WindowBatcher | None:
        """The model's window batcher (made on first use), or None for a handler that does
        not batch windows across requests (it is called behind the gate instead)."""
        with self._batchers_lock:
            if model.name not in self._batchers:
                handler = model.handler
                made = WindowBatcher(handler, model.name) if batches_windows(handler) else None
                self._batchers[model.name] = made
            return self._batchers[model.name]

    # -- Celery task bodies -----------------------------------------------------------------

    def run_job(self, job_id: str) -> None:
        """The task of both audio endpoints: run the job, then drop what it no longer needs."""
        try:
            self.jobs.run(job_id, lambda ctx: self.serve(ctx, self.registry.get(ctx.model)))
        finally:
            cleanup(self.redis, job_id)

    def help_with(self, job_id: str) -> None:
        """A helper task: take parts of a long job on this worker, if any are left."""
        client = self.redis
        status, request_json, priority = client.hmget(
            p.job_key(job_id), [p.JobField.STATUS, p.JobField.REQUEST, p.JobField.PRIORITY]
        )
        plan = client.hget(a.parts_key(job_id), "plan")
        if status != p.JobStatus.RUNNING.value.encode() or request_json is None or plan is None:
            return
        if not client.llen(a.pending_key(job_id)):
            return
        job = TranscriptionJob.parse(p.loads(request_json))
        model = self.registry.models.get(job.model)
        if model is None:
            return
        self.pull_parts(
            job_id,
            model,
            job,
            p.loads(plan),
            threading.Event(),
            priority=int(priority or p.Priority.JOB),
        )

    # -- serving ----------------------------------------------------------------------------

    def serve(self, ctx: JobContext, model: LoadedModel) -> bytes:
        """The job's response body (see :func:`inferq.openai.transcripts.render`)."""
        job = TranscriptionJob.parse(ctx.request)
        with self.local.open(Blobs(self.redis), job.blob, job.filename) as path:
            duration = None
            if ctx.kind == p.JobKind.JOB:
                duration = probe_duration(path)
                chunk_s = self.settings.audio_chunk_sec
                long = duration > chunk_s + split_window(chunk_s)
                if long and transcribe_accepts(model.handler, "clip"):
                    return Coordinator(self, ctx, job, model, path, duration).run()
            return self._serve_whole(ctx, job, model, path, duration)

    def _serve_whole(
        self,
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
                shown = compact(seen)
                stored = progress(segment.end, total, 0, 1, shown)
                ctx.report_progress(stored, {**stored, "segments": shown[-1:]})
            ctx.is_cancelled()

        batcher = self.batcher(model)
        if batcher is not None:  # the job thread plans; the batcher decodes with others
            submitter = batcher.submitter(ctx.priority, ctx.cancel_event)
            try:
                result = transcribe(
                    model,
                    path,
                    job,
                    cancel_event=ctx.cancel_event,
                    on_segment=on_segment,
                    window_submit=submitter.submit,
                )
            finally:
                submitter.close()
        else:
            with self.gate(model).hold(ctx.priority, ctx.is_cancelled):
                result = transcribe(
                    model, path, job, cancel_event=ctx.cancel_event, on_segment=on_segment
                )
        return render_body(
            job,
            language=result.language,
            duration=result.duration,
            segments=segment_dicts(result, logprobs=job.logprobs),
            words=word_dicts(result),
        )

    def pull_parts(
        self,
        job_id: str,
        model: LoadedModel,
        job: TranscriptionJob,
        plan: dict[str, Any],
        cancel_event: threading.Event,
        *,
        priority: int,
    ) -> None:
        """Claim and transcribe this job's pending parts until none are left (or it stops);
        at most one puller per job on this worker."""
        with self._pullers_lock:
            if job_id in self._pullers:
                return
            self._pullers.add(job_id)
        try:
            Puller(self, job_id, model, job, plan, cancel_event, priority).run()
        finally:
            with self._pullers_lock:
                self._pullers.discard(job_id)
