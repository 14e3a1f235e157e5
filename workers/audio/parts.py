"""Pullers: claim a long job's pending parts one by one and record each part's result."""

from __future__ import annotations

import contextlib
import logging
import math
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

# A worker bounds a job's work in flight in *windows*, not parts: it claims the job's next
# part while the windows of its parts in flight (planned, or about one per 30 s) are fewer
# than ``IN_FLIGHT_BATCHES`` batches of the model's ``batch_size`` per decode lane (one more
# than the lanes: a batch waits while each lane decodes one) and fewer than a batch are
# waiting in the batcher. Parts stay small (about ``AUDIO_CHUNK_SEC``: progress part by
# part, fair sharing between workers, a dead worker's part redelivered) while the batches
# fill to ``batch_size``. More in flight would put a job in long batches: progress would
# come in bigger steps, and a cancelled job's batch (CTranslate2 cannot stop mid-batch)
# would hold the model longer.
IN_FLIGHT_BATCHES = 1  # per decode lane, plus one
WINDOW_SEC = 30.0  # a part without planned windows counts one window per this much audio
HUNGRY_POLL_SEC = 0.05
NOT_YET, NONE_LEFT = -2, -1  # what ``Puller._claim`` returns when it claims no part


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
                        if index >= 0:
                            self._run_part(index, path)
                    if index == NONE_LEFT:
                        return
                    if index == NOT_YET:
                        time.sleep(HUNGRY_POLL_SEC)

    def _claim(self) -> int:
        """The index of the part claimed here; ``NOT_YET`` when none is pending but the plan
        is still growing (its coordinator publishes parts block by block), ``NONE_LEFT`` when
        the job has no part left to claim or is over."""
        index = int(self.service.scripts.claim(keys=self.claim_keys, args=[self.worker]))
        if index >= len(self.ranges):  # a part published after this puller read the plan
            plan = p.loads(self.client.hget(self.parts_key, "plan"))
            self.ranges, self.windows = plan["ranges"], plan.get("windows")
        if index == -3:  # looked at in the script: parts published meanwhile are pending
            return NOT_YET
        return index if index >= 0 else NONE_LEFT

    def _run_batched(self, batcher: WindowBatcher, path: Path) -> None:
        """Parts in threads of their own, their windows decoded by the model's window batcher
        with every other request's. The next part is claimed when this job has none in
        flight here, or when :meth:`_wants_more` says so; each part's :class:`Submitter`
        exists before its claim (the part counts as *preparing* from then on), so the
        batcher waits for the windows of parts just claimed instead of starting a small
        batch without them."""
        running: list[tuple[threading.Thread, int]] = []  # (part thread, its windows)
        try:
            while not self.check():
                running = [(thread, n) for thread, n in running if thread.is_alive()]
                if running and not self._wants_more(batcher, running):
                    time.sleep(HUNGRY_POLL_SEC)
                    continue
                submitter = batcher.submitter(self.priority, self.cancel_event)
                index = self._claim()
                if index < 0:
                    submitter.close()
                    if index == NONE_LEFT:
                        return
                    time.sleep(HUNGRY_POLL_SEC)
                    continue
                thread = threading.Thread(
                    target=self._run_part,
                    args=(index, path, submitter),
                    name=f"audio-part-{self.job_id[-8:]}-{index}",
                    daemon=True,
                )
                thread.start()
                running.append((thread, self._windows_of(index)))
        finally:
            for thread, _ in running:
                thread.join()

    def _windows_of(self, index: int) -> int:
        if self.windows is not None:
            return len(self.windows[index])
        start, end = self.ranges[index]
        return max(1, math.ceil((end - start) / WINDOW_SEC))

    def _wants_more(self, batcher: WindowBatcher, running: list[tuple[threading.Thread, int]]):
        """Whether to claim another part beside those ``running`` here: while their windows
        are fewer than ``IN_FLIGHT_BATCHES`` batches per lane plus one, fewer than a batch
        wait in the batcher,
        and this worker holds fewer parts than its share of what is left (the parts still
        pending and its own, over the model's live workers), so that a second worker that
        comes a moment later still finds its half of the parts."""
        windows = sum(n for _, n in running)
        if windows >= (IN_FLIGHT_BATCHES * batcher.lanes + 1) * batcher.batch_size:
            return False
        if batcher.pending() >= batcher.batch_size:
            return False
        left = self.client.llen(a.pending_key(self.job_id))
        if not left:
            return False
        live = self.client.zcount(p.workers_key(self.model.name), f"({p.now()}", "+inf")
        return len(running) < math.ceil((left + len(running)) / max(1, live))

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
