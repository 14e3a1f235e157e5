"""The coordinator of a long audio job: plans it, gets its parts done by every worker of the
model, publishes progress, merges the parts."""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handlers.base import Cancelled, plans_window_blocks, plans_windows
from inferq import audio as a
from inferq import protocol as p
from inferq.errors import ServiceError
from inferq.openai.transcripts import TranscriptionJob
from workers.audio.planning import TAIL_SLACK_SEC, PartPlanner, plan_ranges
from workers.audio.transcribe import progress, render_body
from workers.jobs import JobContext

if TYPE_CHECKING:
    from workers.audio.host import AudioHost
    from workers.loaded import LoadedModel

log = logging.getLogger(__name__)

POLL_SEC = 0.2  # how often the coordinator looks at its parts
CLAIM_CHECK_SEC = 2.0  # how often it looks for parts held by a vanished worker
MAX_HELPERS = 64  # helper tasks sent for one job
PLAN_STALL_SEC = 30.0  # another coordinator's plan not growing this long: carry it on here


class PlanTaken(Exception):
    """Another coordinator of the job extended its plan first (a redelivery while the first
    one was still planning)."""


class Coordinator:
    """Plans a long job, gets its parts done by every worker of the model, merges them."""

    def __init__(
        self,
        service: AudioHost,
        ctx: JobContext,
        job: TranscriptionJob,
        model: LoadedModel,
        path: Path,
        duration: float,
    ):
        self.service = service
        self.ctx = ctx
        self.job = job
        self.model = model
        self.path = path
        self.duration = duration
        self.client = service.redis
        self.job_id = ctx.job_id
        self.parts_key = a.parts_key(ctx.job_id)
        self.pending_key = a.pending_key(ctx.job_id)
        self.results: dict[int, dict[str, Any]] = {}
        self.shown = 0  # the parts (from the first on) whose segments the progress holds
        self.local: threading.Thread | None = None

    # -- plan -------------------------------------------------------------------------------

    def _plan(self) -> dict[str, Any]:
        """The job's plan (:meth:`_plan_here`). When another coordinator of the job extends
        the plan first (this one is a redelivery of a job whose first coordinator still
        plans, or the reverse), this one waits for that plan instead; if it stops growing
        for ``PLAN_STALL_SEC``, this one carries it on from its last part."""
        while True:
            try:
                return self._plan_here()
            except PlanTaken:
                log.warning("job %s: another coordinator is planning it; waiting", self.job_id)
            plan = self._wait_for_plan()
            if plan is not None:
                return plan

    def _wait_for_plan(self) -> dict[str, Any] | None:
        """The plan once another coordinator has written its ``total``; None if it stopped
        growing for ``PLAN_STALL_SEC`` first."""
        last, since = None, time.monotonic()
        while time.monotonic() - since < PLAN_STALL_SEC:
            if self.ctx.is_cancelled():
                raise Cancelled()
            stored, total = self.client.hmget(self.parts_key, ["plan", "total"])
            if total is not None:
                return p.loads(stored)
            if stored != last:
                last, since = stored, time.monotonic()
            time.sleep(POLL_SEC)
        return None

    def _plan_here(self) -> dict[str, Any]:
        """The job's plan, made here or carried on from a redelivery's stored one. Parts are
        published as the plan grows (a block of the file's VAD at a time, see
        :meth:`handlers.speech.handler.SpeechHandler.plan_window_blocks`): the first ones are
        decoded, here and by helpers, while the rest of the file is planned. The parts hash's
        ``total`` is written with the last part: until then pullers wait for more."""
        stored = self.client.hget(self.parts_key, "plan")
        plan: dict[str, Any] = p.loads(stored) if stored is not None else {}
        if plan:
            log.info("job %s: resuming %d parts", self.job_id, len(plan["ranges"]))
            self._send_helpers(self.client.llen(self.pending_key))
            self._start_local_puller(plan)
            if self.client.hexists(self.parts_key, "total"):
                return plan
        chunk_s = self.service.settings.audio_chunk_sec
        handler = self.model.handler
        if not plans_windows(handler):  # ranges ending at pauses, all at once
            ranges = plan_ranges(self.path, self.duration, chunk_s)
            self._publish(plan, [(r, None) for r in ranges], last=True)
            return plan
        start = plan["ranges"][-1][1] if plan else 0.0  # a cut: in a pause
        planner = PartPlanner(chunk_s, start)
        for block in self._window_blocks(handler, start):
            if self.ctx.is_cancelled():
                raise Cancelled()
            parts = planner.add(block)
            if parts:
                self._publish(plan, parts)
        self._publish(plan, planner.finish(self.duration), last=True)
        return plan

    def _window_blocks(self, handler: Any, start: float) -> Iterator[list[tuple[float, float]]]:
        vad = self.job.vad
        if plans_window_blocks(handler):
            return handler.plan_window_blocks(str(self.path), vad=vad or None, start_s=start)
        takes_vad = "vad" in inspect.signature(handler.plan_windows).parameters
        windows = handler.plan_windows(
            str(self.path), **({"vad": vad} if vad and takes_vad else {})
        )
        return iter([[w for w in windows if w[0] >= start]])  # a resumed plan: the rest

    def _publish(self, plan: dict[str, Any], parts: list, *, last: bool = False) -> None:
        """Add ``parts`` (``(range, windows or None)``) to the plan and the pending list,
        send a helper task per part, and start this worker's puller with the first."""
        first = not plan
        if first:
            plan.update(ranges=[], duration=self.duration, coordinator=self.service.worker_name())
            if parts[0][1] is not None:
                plan["windows"] = []
        base = len(plan["ranges"])
        plan["ranges"] += [[round(r[0], 3), round(r[1], 3)] for r, _ in parts]
        if "windows" in plan:
            plan["windows"] += [[list(w) for w in windows] for _, windows in parts]
        if last:  # the last part reads on past the header's duration (VBR files)
            end = plan["ranges"][-1]
            end[1] = round(max(end[1], self.duration) + TAIL_SLACK_SEC, 3)
        ttl = max(60, int(self.client.ttl(p.job_key(self.job_id))))
        total = len(plan["ranges"]) if last else ""
        args = [base, p.dumps(plan), len(plan["ranges"]), total, ttl]
        if not self.service.scripts.publish(keys=[self.parts_key, self.pending_key], args=args):
            raise PlanTaken()
        self._send_helpers(len(parts))
        self._start_local_puller(plan)
        if last:
            log.info(
                "job %s: %.1f s of audio in %d parts at %s%s",
                self.job_id,
                self.duration,
                len(plan["ranges"]),
                ", ".join(f"{r[0]:.1f}" for r in plan["ranges"]),
                f" ({sum(map(len, plan['windows']))} windows)" if "windows" in plan else "",
            )

    def _send_helpers(self, count: int) -> None:
        for _ in range(min(count, MAX_HELPERS)):
            self.service.send_task(
                a.TASK_HELP,
                args=[self.job_id],
                queue=p.queue_name(self.model.name),
                priority=int(self.ctx.priority),
            )

    @property
    def _local_alive(self) -> bool:
        return self.local is not None and self.local.is_alive()

    def _start_local_puller(self, plan: dict[str, Any]) -> None:
        """This worker's puller of the job's parts, unless it already runs."""
        if self._local_alive:
            return
        self.local = threading.Thread(
            target=self.service.pull_parts,
            args=(self.job_id, self.model, self.job, plan),
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
        self._collect(ranges, initial=True)  # parts recorded so far
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
        # The transcript so far is the parts done from the file's start on, so that the
        # segments of the events only ever append, with ids that stay: a part done before
        # an earlier one waits for it.
        segments: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        index = 0
        while index in self.results:
            for segment in self.results[index]["segments"]:
                compact = {"id": len(segments), **{k: segment[k] for k in ("start", "end", "text")}}
                segments.append(compact)
                if index >= self.shown:
                    added.append(compact)
            index += 1
        self.shown = index
        # Each part's range counted within the header's duration: the VAD may plan parts
        # past it (a VBR file whose header says less than its audio holds).
        done_seconds = sum(
            min(ranges[i][1], self.duration) - min(ranges[i][0], self.duration)
            for i in self.results
        )
        stored = progress(done_seconds, self.duration, len(self.results), len(ranges), segments)
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
            if self.service.scripts.release(
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
        if not self._local_alive and self.client.llen(self.pending_key):
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
        return render_body(
            self.job,
            language=language,
            duration=duration or self.duration,
            segments=segments,
            words=words,
        )
