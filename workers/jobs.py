"""Running one job inside a worker: start it, serve it, record its outcome exactly once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis

from handlers.base import Cancelled, InvalidInput
from handlers.proxy import UpstreamError, UpstreamTimeout
from inferq import protocol as p
from inferq.errors import ServiceError, bad_request
from inferq.logs import job_id_var, request_id_var
from inferq.redisconn import redis_client
from inferq.settings import Settings
from workers import metrics
from workers.deadlines import Deadlines
from workers.events import EventPublisher, JobEvents, streamed_output

log = logging.getLogger(__name__)


CANCEL_POLL_SEC = 1.0  # waits wake up this often to look at their job's cancel event
# A job re-reads its status this often, in case a cancel message was missed (the pub/sub
# listener was reconnecting). Under load most interactive jobs wait about a second, so a
# 1 s re-read cost a Redis round trip per job for a case that hardly ever happens.
MISSED_CANCEL_POLL_SEC = 5.0
# Once a job is cancelled or past its time limit, the batcher drops its pending inputs and the
# chat scheduler stops its rows at their next step; a pass that does not end within this long
# (hung, or far slower than a pass should be) is left running and the job stops waiting.
ABANDON_AFTER_SEC = 5.0


class StopWait:
    """Waits on the futures of one job or one batch part: each returns its result, or raises
    :class:`Cancelled` once ``stopped()`` (called about once a second while a future is
    pending) has been seen ``ABANDON_AFTER_SEC`` ago; the waits share that one deadline."""

    def __init__(self, stopped: Callable[[], bool]):
        self.stopped = stopped
        self._give_up_at: float | None = None

    def __call__(self, future: Future) -> Any:
        while True:
            timeout = CANCEL_POLL_SEC
            if self._give_up_at is not None:
                timeout = max(0.0, self._give_up_at - time.monotonic())
            try:
                return future.result(timeout=timeout)
            except TimeoutError:
                if self._give_up_at is None:
                    if self.stopped():
                        self._give_up_at = time.monotonic() + ABANDON_AFTER_SEC
                elif time.monotonic() >= self._give_up_at:
                    log.warning(
                        "a pass did not end %g s after its stop: left running", ABANDON_AFTER_SEC
                    )
                    raise Cancelled() from None


class CancelWatch:
    """The fallback for a missed cancel message: a check that reads the job's status at most
    once per ``MISSED_CANCEL_POLL_SEC`` and sets ``event`` once the job stopped running (cancelled,
    finished elsewhere or expired). True once the work should stop."""

    def __init__(self, client: redis.Redis, job_id: str, event: threading.Event):
        self.redis = client
        self.job_id = job_id
        self.event = event
        self._last = time.monotonic()  # START just read the status
        self._wait = StopWait(self)

    def __call__(self) -> bool:
        if self.event.is_set():
            return True
        now = time.monotonic()
        if now - self._last >= MISSED_CANCEL_POLL_SEC:
            self._last = now
            status = self.redis.hget(p.job_key(self.job_id), p.JobField.STATUS)
            if status != p.JobStatus.RUNNING.value.encode():
                self.event.set()
        return self.event.is_set()

    def wait(self, future: Future) -> Any:
        """The future's result; meanwhile keep checking (see :class:`StopWait`)."""
        return self._wait(future)


def as_service_error(exc: Exception) -> ServiceError:
    """What a serving failure looks like to the client (the one mapping of handler errors)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InvalidInput):
        return bad_request(str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, UpstreamTimeout):
        return ServiceError(504, exc.message, code="upstream_timeout")
    if isinstance(exc, UpstreamError):
        code = "upstream_error" if exc.status >= 500 else "upstream_rejected"
        return ServiceError(exc.status, exc.message, code=code)
    return ServiceError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")


@dataclass
class JobContext:
    """What a serving function gets: the request (its wire form: each family parses it into
    its ``inferq.openai`` job request) and the means to report, to stop and to write events."""

    job_id: str
    request: dict[str, Any]
    priority: int
    kind: str
    cancel_event: threading.Event
    runtime: JobRuntime
    deliveries: int = 1
    watch: CancelWatch = field(init=False)
    events: JobEvents = field(init=False)

    def __post_init__(self) -> None:
        self.watch = CancelWatch(self.runtime.redis, self.job_id, self.cancel_event)
        streamed, chunks = "", False
        if self.deliveries > 1:  # a redelivery resumes what the stream already holds
            streamed, chunks = streamed_output(self.runtime.redis, self.job_id)
        self.events = JobEvents(self.runtime.publisher, self.job_id, streamed, chunks)

    @property
    def model(self) -> str:
        """The serving model's catalog name (every job request names it)."""
        return self.request["model"]

    def report_progress(self, progress: dict[str, Any], event: dict[str, Any] | None = None):
        self.events.progress(progress, event)

    def is_cancelled(self) -> bool:
        return self.watch()

    def wait(self, future: Future) -> Any:
        """A batcher's or scheduler's future, watching for a missed cancel meanwhile."""
        return self.watch.wait(future)


class JobRuntime:
    """The worker's side of the queue protocol (a synchronous Redis client)."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        self.settings = settings
        self.redis = client or redis_client(
            settings,
            retry_window_sec=settings.worker_redis_retry_sec,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        self._start = self.redis.register_script(p.START_SCRIPT)
        self._finish = self.redis.register_script(p.FINISH_SCRIPT)
        self._publisher: EventPublisher | None = None
        self._companions: ThreadPoolExecutor | None = None  # threads of multi-job messages
        self.running: dict[str, threading.Event] = {}
        self.deadlines = Deadlines()  # every running job's time limit, on one thread
        self._lock = threading.Lock()

    @property
    def publisher(self) -> EventPublisher:
        """The worker's event writer (its thread starts with the first job)."""
        with self._lock:
            if self._publisher is None:
                self._publisher = EventPublisher(self.redis)
            return self._publisher

    def run(self, job_id: str, serve: Callable[[JobContext], bytes]) -> None:
        self._run_started(job_id, self._start(**self._start_args(job_id)), serve)

    def run_many(self, job_ids: Sequence[str], serve: Callable[[JobContext], bytes]) -> None:
        """The jobs of one message (``inferq.protocol.COALESCED_ENDPOINTS``), all at once so
        that they share the batcher's passes: started in one round trip, then each served and
        finished on its own (the first in this thread, the others in companion threads), as
        :meth:`run` would. Returns when every one is done: the message is acknowledged then,
        and a worker that dies before redelivers all of them (``START`` skips the finished)."""
        if len(job_ids) == 1:
            self.run(job_ids[0], serve)
            return
        starts = self._start_all(job_ids)
        with self._lock:
            if self._companions is None:
                self._companions = ThreadPoolExecutor(256, thread_name_prefix="job")
            companions = self._companions
        others = [
            companions.submit(self._run_started, job_id, started, serve)
            for job_id, started in zip(job_ids[1:], starts[1:], strict=True)
        ]
        try:
            self._run_started(job_ids[0], starts[0], serve)
        finally:
            for other in others:
                other.result()

    def _start_args(self, job_id: str) -> dict[str, list]:
        return {"keys": [p.job_key(job_id), p.events_key(job_id)], "args": [f"{p.now():.6f}"]}

    def _start_all(self, job_ids: Sequence[str]) -> list:
        """``START`` of each job, pipelined (one round trip; EVALSHA of the loaded script)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            call = self._start_args(job_id)
            pipe.evalsha(self._start.sha, len(call["keys"]), *call["keys"], *call["args"])
        try:
            return pipe.execute()
        except redis.exceptions.NoScriptError:  # not loaded yet (or Redis lost its scripts)
            return [self._start(**self._start_args(job_id)) for job_id in job_ids]

    def _run_started(
        self, job_id: str, started: list | None, serve: Callable[[JobContext], bytes]
    ) -> None:
        if started is None:
            log.info(
                "job %s: not queued any more (cancelled, finished or expired); skipped", job_id
            )
            return
        request_json, deliveries, priority, kind, request_id, endpoint, model, created = (
            value.decode() if value else "" for value in started
        )
        job_token = job_id_var.set(job_id)
        request_token = request_id_var.set(request_id or None)
        began, outcome = time.monotonic(), p.JobStatus.FAILED
        waited = p.now() - float(created) if created else None
        if int(deliveries) > self.settings.max_deliveries:
            job_id_var.reset(job_token)
            request_id_var.reset(request_token)
            self.finish_failed(
                job_id,
                ServiceError(
                    500,
                    f"job was delivered {int(deliveries)} times without finishing "
                    "(its worker died each time); giving up",
                    code="poison_job",
                    final=True,
                ),
            )
            return
        counter = f"{endpoint}|{model}|"  # + the outcome: counted by the finish script
        cancel_event, timed_out = threading.Event(), threading.Event()
        limit = self.settings.job_timeout(endpoint)
        deadline = self.deadlines.add(limit, lambda: (timed_out.set(), cancel_event.set()))
        with self._lock:
            self.running[job_id] = cancel_event
        ctx = JobContext(
            job_id=job_id,
            request=p.loads(request_json),
            priority=int(priority or 0),
            kind=kind,
            cancel_event=cancel_event,
            runtime=self,
            deliveries=int(deliveries),
        )
        log.info("job %s started (request_id=%s, delivery %s)", job_id, request_id, deliveries)
        try:
            try:
                result = serve(ctx)
                ctx.events.end()
            finally:
                ctx.events.close()  # a pass left running writes nothing after this
                ctx.events.flush()  # the output is in the stream before the terminal status
        except Cancelled:
            if timed_out.is_set():
                self.finish_failed(
                    job_id,
                    ServiceError(
                        504,
                        f"the job ran past its {limit:g} s limit and was stopped",
                        code="timeout",
                        final=True,
                    ),
                    counter=counter,
                )
            else:
                outcome = p.JobStatus.CANCELLED
                self._finish_with(job_id, outcome, counter=counter)
                log.info("job %s cancelled (request_id=%s)", job_id, request_id)
        except Exception as exc:
            error = as_service_error(exc)
            if error is not exc and error.code == "internal_error":
                log.exception("job %s failed (request_id=%s)", job_id, request_id)
            self.finish_failed(job_id, error, counter=counter)
        else:
            outcome = p.JobStatus.SUCCEEDED
            if self._finish_with(job_id, outcome, {p.JobField.RESULT: result}, counter=counter):
                log.info("job %s succeeded (request_id=%s)", job_id, request_id)
            else:
                log.info("job %s: result dropped, the job was finished or cancelled", job_id)
        finally:
            self.deadlines.cancel(deadline)
            with self._lock:
                self.running.pop(job_id, None)
            metrics.record_job(
                model=model,
                endpoint=endpoint,
                status=outcome.value,
                seconds=time.monotonic() - began,
                waited=waited,
            )
            job_id_var.reset(job_token)
            request_id_var.reset(request_token)

    def finish_failed(self, job_id: str, error: ServiceError, *, counter: str = "") -> None:
        self._finish_with(
            job_id,
            p.JobStatus.FAILED,
            {p.JobField.ERROR: p.dumps(error.to_record())},
            counter=counter,
        )
        log.info("job %s failed: %s %s", job_id, error.status, error.message)

    def _finish_with(
        self, job_id: str, status: p.JobStatus, fields: dict | None = None, *, counter: str = ""
    ) -> bool:
        """``counter``: ``"<endpoint>|<model>|"``, counted with ``status`` appended (one round
        trip for the outcome and the count)."""
        count = counter + status.value if counter else ""
        args: list[Any] = [status.value, f"{p.now():.6f}", self.settings.result_ttl_sec, count]
        for name, value in (fields or {}).items():
            args += [name.value, value]
        keys = [p.job_key(job_id), p.events_key(job_id), p.STATS_JOBS_KEY]
        return bool(self._finish(keys=keys, args=args))

    def cancel_running(self, job_id: str) -> bool:
        with self._lock:
            event = self.running.get(job_id)
        if event is not None:
            event.set()
        return event is not None
