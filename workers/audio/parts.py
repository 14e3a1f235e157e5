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
from workers.audio.batcher import Submitter, WindowBatcher
from workers.audio.transcribe import part_result, transcribe
from workers.jobs import CancelWatch, as_service_error

if TYPE_CHECKING:
    from workers.audio.host import AudioHost
    from workers.loaded import LoadedModel

log = logging.getLogger(__name__)

# Parts of one job decoded at once on one worker (window batcher). Two keep the model busy
# (one part's audio is decoded and its windows found while the other's are decoded) and
# fill batches with other requests' windows; more would put every part of a job in one
# long batch: progress would come only at the end, and a cancelled job's batch (CTranslate2
# cannot stop mid-batch) would hold the model longer.
MAX_PARTS_IN_FLIGHT = 2
HUNGRY_POLL_SEC = 0.05


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
        self.windows = plan.get("windows")  # each part's windows, or None: the part's VAD
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
                batcher = service.batcher(self.model)
                if batcher is not None:
                    self._run_batched(batcher, path)
                    return
                while not self.check():
                    with service.gate(self.model).hold(self.priority, self.check):
                        index = self._claim()
                        if index < 0:
                            return
                        self._run_part(index, path)

    def _claim(self) -> int:
        return int(self.service.scripts.claim(keys=self.claim_keys, args=[self.worker]))

    def _run_batched(self, batcher: WindowBatcher, path: Path) -> None:
        """Parts in threads of their own, their windows decoded by the model's window batcher
        with every other request's: the next part is claimed when this job has none in
        flight, or fewer than ``MAX_PARTS_IN_FLIGHT`` and the batcher is hungry (nothing
        being prepared, less than a batch pending), so a worker takes parts as fast as its
        model can use them, no faster."""
        running: list[threading.Thread] = []
        try:
            while not self.check():
                running = [thread for thread in running if thread.is_alive()]
                if len(running) >= MAX_PARTS_IN_FLIGHT or (running and not batcher.hungry()):
                    time.sleep(HUNGRY_POLL_SEC)
                    continue
                index = self._claim()
                if index < 0:
                    return
                submitter = batcher.submitter(self.priority, self.cancel_event)
                thread = threading.Thread(
                    target=self._run_part,
                    args=(index, path, submitter),
                    name=f"audio-part-{self.job_id[-8:]}-{index}",
                    daemon=True,
                )
                thread.start()
                running.append(thread)
        finally:
            for thread in running:
                thread.join()

    def _run_part(self, index: int, path: Path, submitter: Submitter | None = None) -> None:
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
                windows=None if self.windows is None else self.windows[index],
                window_submit=submitter.submit if submitter is not None else None,
            )
            field, value = "r", p.dumps(part_result(result, logprobs=self.job.logprobs))
        except InvalidInput as exc:
            if exc.code == "invalid_audio" and index > 0:
                # nothing decodable in this range (past the real end of a VBR file)
                empty = {"segments": [], "words": [], "language": None, "duration": 0.0}
                field, value = "r", p.dumps(empty)
            else:
                field, value = "f", p.dumps(as_service_error(exc).to_record())
        except Cancelled:
            if submitter is not None:
                return  # a part thread of its own: the puller sees the cancel too
            raise
        except Exception as exc:
            log.exception("job %s: part %d failed", self.job_id, index)
            field, value = "f", p.dumps(as_service_error(exc).to_record())
        finally:
            if submitter is not None:
                submitter.close()
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
