"""The queue protocol, defined once for the API and the workers.

A job is a Redis hash ``inferq:job:<id>`` (fields in :class:`JobField`) that lives
``RESULT_TTL_SEC``. The broker message (a Celery task on the model's queue) carries only the
job id: the request body, status, progress and result live in the hash, so a redelivered
message finds everything it needs and a result is written once.

State changes go through the Lua scripts below, so that "cancel" racing "start" or "finish"
always has one winner. Each terminal transition publishes ``"<id> <status>"`` on the job's
``notify`` channel (the API instance waiting for it; a small result follows as
``"<id> <status> <result>"``) and on the job's event stream.
"""

from __future__ import annotations

import time
import uuid
from enum import IntEnum, StrEnum
from typing import Any

import orjson

PREFIX = "inferq"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Endpoint(StrEnum):
    """The request families a job can carry, named by their OpenAI route."""

    EMBEDDINGS = "/v1/embeddings"
    RERANK = "/v1/rerank"
    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    AUDIO_TRANSCRIPTIONS = "/v1/audio/transcriptions"
    AUDIO_TRANSLATIONS = "/v1/audio/translations"


# Capability a worker must announce for a model before the API sends it this endpoint's jobs.
ENDPOINT_CAPABILITY = {
    Endpoint.EMBEDDINGS: "text-embedding",
    Endpoint.RERANK: "rerank",
    Endpoint.CHAT: "chat-completion",
    Endpoint.COMPLETIONS: "text-completion",
    Endpoint.AUDIO_TRANSCRIPTIONS: "audio-transcription",
    Endpoint.AUDIO_TRANSLATIONS: "audio-translation",
}

# Celery task names, one per endpoint family (visible in flower / celery inspect).
TASK_NAMES = {
    Endpoint.EMBEDDINGS: "inferq.embeddings",
    Endpoint.RERANK: "inferq.rerank",
    Endpoint.CHAT: "inferq.chat",
    Endpoint.COMPLETIONS: "inferq.completions",
    Endpoint.AUDIO_TRANSCRIPTIONS: "inferq.audio.transcriptions",
    Endpoint.AUDIO_TRANSLATIONS: "inferq.audio.translations",
}

# A task's arguments are job ids: ``(job_id, *more_job_ids)``. The API puts several
# interactive jobs of one model and endpoint into one message when they arrive together
# (``PUBLISH_COALESCE_MAX``); only these endpoints' tasks take more than one.
COALESCED_ENDPOINTS = frozenset({Endpoint.EMBEDDINGS, Endpoint.RERANK})


class Priority(IntEnum):
    """Broker priority (Redis: lower runs first) and batcher priority inside a worker."""

    INTERACTIVE = 0  # sync OpenAI routes: someone is waiting
    JOB = 3  # /v1/jobs: polled
    BULK = 6  # batch files


PRIORITY_STEPS = [int(p) for p in Priority]


class JobKind(StrEnum):
    SYNC = "sync"  # behind a blocking route; not listed by GET /v1/jobs
    JOB = "job"


class JobField(StrEnum):
    ID = "id"
    KIND = "kind"
    ENDPOINT = "endpoint"
    MODEL = "model"
    OWNER = "owner"
    STATUS = "status"
    PRIORITY = "priority"
    CREATED_AT = "created_at"
    STARTED_AT = "started_at"
    FINISHED_AT = "finished_at"
    REQUEST = "request"  # JSON: the validated request body
    METADATA = "metadata"  # JSON
    PROGRESS = "progress"  # JSON
    RESULT = "result"  # JSON: exactly the sync route's response body
    ERROR = "error"  # JSON: {"status": http_status, "error": {...}}
    NOTIFY = "notify"  # pub/sub channel told about the terminal state
    REQUEST_ID = "request_id"
    DELIVERIES = "deliveries"  # how many times a worker started it
    TTL = "ttl"  # seconds the job and its result are kept after it finishes


def queue_name(model: str) -> str:
    """The Celery queue (a Redis list) holding one model's jobs."""
    return f"{PREFIX}.model.{model}"


def queue_lists(model: str) -> list[str]:
    """The Redis lists behind a model's queue, one per priority step (kombu's layout)."""
    queue = queue_name(model)
    return [queue if step == 0 else f"{queue}:{step}" for step in PRIORITY_STEPS]


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def names_a_record(record_id: str) -> bool:
    """Whether an id a client sent can name a job, batch or file: none of ours holds ':',
    which joins a record's key to the keys kept beside it (a job's event stream is
    ``inferq:job:<id>:events``), so such an id would read one of those (a set, a stream) as
    a record: a WRONGTYPE reply from Redis."""
    return ":" not in record_id


def events_key(job_id: str) -> str:
    """The job's event stream (a Redis Stream that expires with the job).

    Entries have two fields: ``event`` (:class:`EventType`) and ``data`` (JSON). The API
    creates it with a ``queued`` status entry; the Lua scripts below add the other status
    changes and progress; a chat worker adds content deltas (or, for proxies, upstream chunks).
    Entry ids are the SSE event ids of ``GET /v1/jobs/{id}/events`` (resume with Last-Event-ID).
    """
    return f"{PREFIX}:job:{job_id}:events"


class EventType(StrEnum):
    STATUS = "status"  # data: {"status": <JobStatus>}
    PROGRESS = "progress"  # data: the job's progress object
    # data: {"content": <text>} (chat: generated text, in order), plus "index" (the choice,
    # when n > 1 and not 0) and "logprobs" (compact per-token entries) when they apply
    DELTA = "delta"
    CHUNK = "chunk"  # data: an upstream chat.completion.chunk, verbatim (proxy models)
    # data: {"discarded": <characters>}: the job was redelivered (its worker died) and the new
    # run's output departs from what the stream already holds: drop the output read so far,
    # the new run's output follows in full
    RESTART = "restart"


def event_fields(event: EventType, data: Any) -> dict[str, bytes | str]:
    """The fields of one stream entry."""
    return {"event": event.value, "data": dumps(data)}


def completion_id(job_id: str) -> str:
    """The OpenAI ``id`` of the chat completion a job produces (``chatcmpl-...``)."""
    return "chatcmpl-" + job_id.removeprefix("job_")


def jobs_index_key(owner: str) -> str:
    """Sorted set of an owner's listed jobs, scored by creation time (ms)."""
    return f"{PREFIX}:jobs:{owner}"


def workers_key(model: str) -> str:
    """Sorted set of live workers for a model, scored by heartbeat expiry (epoch seconds)."""
    return f"{PREFIX}:workers:{model}"


# kombu's Redis transport: sorted set of unacknowledged deliveries scored by delivery time. A
# delivery older than the visibility timeout is handed to another worker; workers refresh the
# score of the jobs they are running (a lease), so only a dead worker's jobs are redelivered.
UNACKED_KEY = "unacked"  # kombu: delivery tag -> message, until acknowledged
UNACKED_INDEX_KEY = "unacked_index"
STATS_JOBS_KEY = f"{PREFIX}:stats:jobs"  # hash: "<endpoint>|<model>|<status>" -> finished jobs
MODEL_INFO_KEY = f"{PREFIX}:model-info"  # hash: model name -> JSON info announced by workers
CANCEL_CHANNEL = f"{PREFIX}:cancel"  # pub/sub: job ids whose running work must stop


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def now() -> float:
    return time.time()


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(value: bytes | str | None) -> Any:
    return None if value is None else orjson.loads(value)


def new_job_fields(
    *,
    job_id: str,
    kind: JobKind,
    endpoint: Endpoint,
    model: str,
    owner: str,
    request: dict[str, Any],
    priority: Priority,
    metadata: dict[str, Any] | None,
    notify: str,
    request_id: str,
    ttl: int,
) -> dict[str, Any]:
    return {
        JobField.ID: job_id,
        JobField.KIND: kind.value,
        JobField.ENDPOINT: endpoint.value,
        JobField.MODEL: model,
        JobField.OWNER: owner,
        JobField.STATUS: JobStatus.QUEUED.value,
        JobField.PRIORITY: int(priority),
        JobField.CREATED_AT: f"{now():.6f}",
        JobField.REQUEST: dumps(request),
        JobField.METADATA: dumps(metadata or {}),
        JobField.NOTIFY: notify,
        JobField.REQUEST_ID: request_id,
        JobField.DELIVERIES: 0,
        JobField.TTL: ttl,
    }


# What reading a job for a client needs: everything but the (possibly large) request body.
PUBLIC_FIELDS = [
    f for f in JobField if f not in (JobField.REQUEST, JobField.NOTIFY, JobField.DELIVERIES)
]


def decode_job(fields: list[str], values: list[bytes | None]) -> dict[str, Any] | None:
    """An HMGET reply as a dict (absent fields left out); None when the job does not exist."""
    record = {f: v for f, v in zip(fields, values, strict=True) if v is not None}
    return record if JobField.ID in record else None


# --- State transitions (atomic) -------------------------------------------------------------

# KEYS[1] job key, KEYS[2] (optional) its event stream; ARGV[1] now. Returns [request JSON,
# deliveries, priority, kind, request id] if the worker should run the job, nil if it is gone or
# finished (a stale or duplicate delivery).
START_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
if status ~= 'queued' and status ~= 'running' then return nil end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if KEYS[2] then
  redis.call('XADD', KEYS[2], 'NOMKSTREAM', '*', 'event', 'status', 'data', '{"status":"running"}')
end
return redis.call('HMGET', KEYS[1], 'request', 'deliveries', 'priority', 'kind', 'request_id',
                  'endpoint', 'model', 'created_at')
"""

# A result up to this size travels in the terminal notification too: ``"<id> <status>
# <result>"``, so that the waiting API answers without reading it back (see FINISH_SCRIPT).
NOTIFY_INLINE_MAX = 65536


def parse_notification(data: bytes) -> tuple[str, str, bytes | None]:
    """``(job id, status, inline result or None)`` of a terminal notification."""
    job_id, _, rest = data.partition(b" ")
    status, _, result = rest.partition(b" ")
    return job_id.decode(), status.decode(), result or None


# KEYS[1] job key, KEYS[2] (optional) its event stream, KEYS[3] (optional) the finished-jobs
# counter hash; ARGV: status, now, default ttl, counter field ('' for none), field, value[,
# field, value]. Counts the worker's outcome (in the same round trip), then finishes a queued
# or running job once; returns 1 when this call set the terminal state, else 0.
FINISH_SCRIPT = """
if KEYS[3] and ARGV[4] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[4], 1) end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status ~= 'queued' and status ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or ARGV[3])
redis.call('EXPIRE', KEYS[1], ttl)
if KEYS[2] then
  redis.call('XADD', KEYS[2], 'NOMKSTREAM', '*', 'event', 'status',
    'data', '{"status":"' .. ARGV[1] .. '"}')
  redis.call('EXPIRE', KEYS[2], ttl)
end
local id = redis.call('HGET', KEYS[1], 'id')
local notify = redis.call('HGET', KEYS[1], 'notify')
if notify and notify ~= '' then
  local message = id .. ' ' .. ARGV[1]
  for i = 5, #ARGV, 2 do
    if ARGV[i] == 'result' and #ARGV[i + 1] <= NOTIFY_INLINE_MAX then
      message = message .. ' ' .. ARGV[i + 1]
    end
  end
  redis.call('PUBLISH', notify, message)
end
return 1
""".replace("NOTIFY_INLINE_MAX", str(NOTIFY_INLINE_MAX))

# KEYS[1] job key, KEYS[2] (optional) its event stream; ARGV[1] now; ARGV[2] cancel channel;
# ARGV[3] default ttl. Returns the status the job had before.
CANCEL_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return nil end
if status ~= 'queued' and status ~= 'running' then return status end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or ARGV[3])
redis.call('EXPIRE', KEYS[1], ttl)
if KEYS[2] then
  redis.call('XADD', KEYS[2], 'NOMKSTREAM', '*', 'event', 'status',
    'data', '{"status":"cancelled"}')
  redis.call('EXPIRE', KEYS[2], ttl)
end
local id = redis.call('HGET', KEYS[1], 'id')
if status == 'running' then redis.call('PUBLISH', ARGV[2], id) end
local notify = redis.call('HGET', KEYS[1], 'notify')
if notify and notify ~= '' then redis.call('PUBLISH', notify, id .. ' cancelled') end
return status
"""

# KEYS[1] job key, KEYS[2] (optional) its event stream; ARGV[1] the progress JSON kept in the
# hash, ARGV[2] (optional) the progress event's data if not the same (e.g. only the segments
# added since the last event). Only while running.
PROGRESS_SCRIPT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
if KEYS[2] then
  redis.call('XADD', KEYS[2], 'NOMKSTREAM', '*', 'event', 'progress', 'data', ARGV[2] or ARGV[1])
end
return 1
"""


def celery_config(
    broker_url: str,
    visibility_timeout_sec: int,
    *,
    task_events: bool = True,
    transport_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Celery settings shared by the API (which only sends) and the workers.
    ``transport_options``: extra kombu options (Sentinel's ``master_name``)."""
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout_sec,
            # Look for unacked messages of dead workers often enough to honour the timeout.
            "unacked_restore_interval": max(1, min(10, visibility_timeout_sec // 4)),
            "unacked_restore_throttle": 1,
            "queue_order_strategy": "priority",
            "priority_steps": PRIORITY_STEPS,
            "sep": ":",
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            "retry_on_timeout": True,
            **(transport_options or {}),
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,  # results live in the job hash, written once
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_send_sent_event": task_events,
        "worker_send_task_events": task_events,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        "broker_pool_limit": 32,
    }
