"""Pullers: claim a long job's pending parts one by one and record each part's result."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers.base import Cancelled, InvalidInput
from inferq import audio as a
from inferq import protocol as p
from inferq.blobs import Blobs
from inferq.errors import ServiceError
from inferq.openai.transcripts import TranscriptionJob
from workers.audio.transcribe import part_result, transcribe
from workers.jobs import CancelWatch, as_service_error

if TYPE_CHECKING:
    from workers.audio.host import AudioHost
    from workers.loaded import LoadedModel

log = logging.getLogger(__name__)


class Puller:
    """Claims and transcribes one job's pending parts until none are left (or it stops)."""

    def __init__(
        self,
        service: AudioHost,
        job_id: str,
        model: LoadedModel,
        job: TranscriptionJob,
        plan: dict[str, Any],
        cancel_event: threading.Event,
        priority: int,
    ):
        self.service = service
        self.client = service.redis
        self.job_id = job_id
        self.model = model
        self.job = job
        self.ranges = plan["ranges"]
        self.cancel_event = cancel_event
        self.priority = priority
        self.worker = service.worker_name()
        self.parts_key = a.parts_key(job_id)
        self.claim_keys = [self.parts_key, a.pending_key(job_id), p.job_key(job_id)]
        self.check = CancelWatch(self.client, job_id, cancel_event)

    def run(self) -> None:
        service = self.service
        with contextlib.ExitStack() as stack:
            try:
                path = stack.enter_context(
                    service.local.open(Blobs(self.client), self.job.blob, self.job.filename)
                )
            except ServiceError:
                return  # the upload is gone: the job is over
            with contextlib.suppress(Cancelled):
                while not self.check():
                    with service.gate(self.model).hold(self.priority, self.check):
                        claim = service.scripts.claim
                        index = int(claim(keys=self.claim_keys, args=[self.worker]))
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
            field, value = "r", p.dumps(part_result(result))
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
        settled = self.service.scripts.record(
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
