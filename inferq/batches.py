"""Files and the OpenAI Batch API: Redis keys, record fields and atomic steps.

Shared by the API (creates files and batches, reads them) and the workers (plan, run and
finalize batches). A batch runs as:

1. ``plan`` (any worker, control queue): stream the input file once, validate every line
   (a malformed line fails the batch, naming its line number), then cut it into **parts**:
   runs of consecutive lines for one model, described by byte offsets into the input file,
   and list their indices in the batch's **to-do list**; then enqueue a few **runner** tasks
   on that model's queue at bulk priority (``BATCH_ACTIVE_PARTS`` per live worker).
2. ``runner`` (a worker of that model): claim the next part from the to-do list
   (``CLAIM_PART_SCRIPT``, which remembers the runner's claim, so a redelivered runner resumes
   its part), read its byte range, run its lines together (all the texts of all its lines
   share the model's batches), record its output and error lines with
   ``RECORD_PART_SCRIPT`` — once, whatever redeliveries happen — and claim the next one until
   the list is empty. A batch thus holds a bounded number of broker messages and worker
   threads however many parts it has; runners added as workers join spread it wider.
3. ``finalize`` (control queue, when every part is settled): concatenate part outputs in
   order into the output and error files, then mark the batch completed (or cancelled /
   expired, keeping what finished).
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from inferq.protocol import PREFIX, Endpoint, loads

CONTROL_QUEUE = f"{PREFIX}.control"
TASK_PLAN = "inferq.batch.plan"
TASK_RUNNER = "inferq.batch.runner"
TASK_FINALIZE = "inferq.batch.finalize"

BATCH_ENDPOINTS = (Endpoint.EMBEDDINGS, Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.RERANK)


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# Where parts stop starting new work.
STOPPED_STATUSES = frozenset(
    {BatchStatus.CANCELLING, BatchStatus.CANCELLED, BatchStatus.FAILED, BatchStatus.EXPIRED}
)
# A cancelled or expired batch's runners settle their parts within a second or two; after this
# long the sweep settles what is left itself (the model may have no live worker at all).
STOP_GRACE_SEC = 10
FINAL_STATUSES = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)

# The error of a line a stopped batch never ran (OpenAI's batch output error codes).
CANCELLED_LINE_ERROR = {
    "code": "batch_cancelled",
    "message": "The batch was cancelled before this request ran.",
}
EXPIRED_LINE_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}

TIMESTAMP_FIELDS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def file_key(file_id: str) -> str:
    return f"{PREFIX}:file:{file_id}"


def files_index_key(owner: str) -> str:
    return f"{PREFIX}:files:{owner}"


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}"


def batches_index_key(owner: str) -> str:
    return f"{PREFIX}:batches:{owner}"


def due_after_expiry(expires_at: int | str) -> int:
    """A batch's score in the open set while nothing earlier is due: its expiry plus the
    grace its running parts have to record their own lines."""
    return int(expires_at) + STOP_GRACE_SEC


def open_batches_key() -> str:
    """Sorted set: batches not yet final, scored by when the workers' sweep should look at
    them (``STOP_GRACE_SEC`` after the expiry, or after a cancel; a finalize that starts
    moves it past its lock, in case it dies)."""
    return f"{PREFIX}:batches:open"


def parts_key(batch_id: str) -> str:
    """Hash: part index -> JSON {model, start, end, lines, first_line}."""
    return f"{PREFIX}:batch:{batch_id}:parts"


def todo_key(batch_id: str, model: str) -> str:
    """List: indices of ``model``'s parts that no runner has claimed yet."""
    return f"{PREFIX}:batch:{batch_id}:todo:{model}"


def runners_field(model: str) -> str:
    """Batch record field: how many runners ``model``'s parts have."""
    return f"runners:{model}"


def claims_key(batch_id: str) -> str:
    """Hash: runner id -> the part index it is running."""
    return f"{PREFIX}:batch:{batch_id}:claims"


def done_parts_key(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:done"


def part_output_key(batch_id: str, part: int) -> str:
    return f"{PREFIX}:batch:{batch_id}:out:{part}"


def part_errors_key(batch_id: str, part: int) -> str:
    return f"{PREFIX}:batch:{batch_id}:err:{part}"


def decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def render_file(record: dict[str, str]) -> dict[str, Any]:
    return {
        "id": record["id"],
        "object": "file",
        "bytes": int(record["bytes"]),
        "created_at": int(record["created_at"]),
        "filename": record["filename"],
        "purpose": record["purpose"],
        "expires_at": int(record["expires_at"]) if record.get("expires_at") else None,
        "status": "processed",
        "status_details": None,
    }


def render_batch(record: dict[str, str]) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "id": record["id"],
        "object": "batch",
        "endpoint": record["endpoint"],
        "errors": loads(record["errors"]) if record.get("errors") else None,
        "input_file_id": record["input_file_id"],
        "completion_window": record["completion_window"],
        "status": record["status"],
        "output_file_id": record.get("output_file_id") or None,
        "error_file_id": record.get("error_file_id") or None,
    }
    for name in TIMESTAMP_FIELDS:
        batch[name] = int(record[name]) if record.get(name) else None
    batch["request_counts"] = {
        "total": int(record.get("total", 0)),
        "completed": int(record.get("completed", 0)),
        "failed": int(record.get("failed", 0)),
    }
    batch["metadata"] = loads(record["metadata"]) if record.get("metadata") else None
    models = loads(record["models"]) if record.get("models") else []
    # OpenAI's batches have one model; a batch here may mix several (named in file order).
    batch["model"] = ", ".join(models) if models else None
    input_tokens = int(record.get("input_tokens", 0))
    output_tokens = int(record.get("output_tokens", 0))
    batch["usage"] = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }
    return batch


def line_tokens(body: dict[str, Any]) -> tuple[int, int]:
    """(input, output) tokens of one response body's ``usage`` (chat: prompt + completion;
    embeddings: prompt; rerank: total, all input)."""
    usage = body.get("usage") or {}
    output = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    total = int(usage.get("total_tokens") or 0)
    given = usage.get("prompt_tokens", usage.get("input_tokens"))
    return (int(given) if given is not None else max(0, total - output)), output


# KEYS: batch, done set, output list, error list. ARGV: part index, ok count, error count,
# input tokens, output tokens (the usage of the output lines), then the output lines, then the
# error lines. Records a part once; returns -1 for a duplicate
# or a batch already final (or gone), else 1 when this was the last part to settle (the caller
# finalizes), else 0.
_FINAL_LUA = "{" + ", ".join(f"['{s}'] = true" for s in sorted(FINAL_STATUSES)) + "}"
RECORD_PART_SCRIPT = f"""
local final = {_FINAL_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
if not status or final[status] then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return -1 end
local ok = tonumber(ARGV[2])
local bad = tonumber(ARGV[3])
for i = 6, 5 + ok do redis.call('RPUSH', KEYS[3], ARGV[i]) end
for i = 6 + ok, 5 + ok + bad do redis.call('RPUSH', KEYS[4], ARGV[i]) end
redis.call('HINCRBY', KEYS[1], 'input_tokens', tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[1], 'output_tokens', tonumber(ARGV[5]))
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
  if ok > 0 then redis.call('EXPIRE', KEYS[3], ttl) end
  if bad > 0 then redis.call('EXPIRE', KEYS[4], ttl) end
end
local completed = redis.call('HINCRBY', KEYS[1], 'completed', ok)
redis.call('HINCRBY', KEYS[1], 'failed', bad)
local settled = redis.call('HINCRBY', KEYS[1], 'parts_settled', 1)
local parts = tonumber(redis.call('HGET', KEYS[1], 'parts') or '-1')
if settled == parts then return 1 end
return 0
"""

# KEYS: to-do list, claims hash. ARGV[1]: runner id. The part this runner claimed before (a
# redelivered runner resumes it), else the next part from the to-do list, else nil.
CLAIM_PART_SCRIPT = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then return held end
local ttl = redis.call('TTL', KEYS[1])
local index = redis.call('LPOP', KEYS[1])
if not index then return false end
redis.call('HSET', KEYS[2], ARGV[1], index)
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
return index
"""

# KEYS[1] batch. ARGV: expected current statuses (comma-separated), new status, timestamp
# field, now. Moves the batch only from one of the expected statuses; returns 1 if it moved.
TRANSITION_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
for expected in string.gmatch(ARGV[1], '[^,]+') do
  if status == expected then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[3], ARGV[4])
    return 1
  end
end
return 0
"""

# Lua: 1 when a batch still open (but ARGV[3]) reads file ARGV[1] as its input (ARGV[2]: the
# batch key prefix, KEYS[1]: the open batches).
_OTHER_OPEN_BATCH_READS_LUA = """
local function other_open_batch_reads()
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if id ~= ARGV[3] and redis.call('HGET', ARGV[2] .. id, 'input_file_id') == ARGV[1] then
      return true
    end
  end
  return false
end
"""

# KEYS[1] the open batches. ARGV: a file id, the batch key prefix, a batch id to leave out.
# 1 when a batch still open (but that one) reads that file as its input: a deleted input
# file keeps its bytes until no open batch needs them.
INPUT_IN_USE_SCRIPT = (
    _OTHER_OPEN_BATCH_READS_LUA
    + """
if other_open_batch_reads() then return 1 end
return 0
"""
)

# KEYS: the input file's record, its bytes (blob). ARGV[1]: the batch record's TTL. A new
# batch holds its input's bytes at least as long as its own record: the parts read their lines
# when they run, so neither a delete nor the file's expiry may take them before the batch
# ends (``RELEASE_INPUT_SCRIPT`` gives the file its own expiry back). 0 when the file is gone.
HOLD_INPUT_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local left = redis.call('TTL', KEYS[2])
if left >= 0 and left < tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return 1
"""

# KEYS: the open batches, the input file's record, its bytes. ARGV: as INPUT_IN_USE_SCRIPT's
# (the batch that ends). Takes that batch out of the open ones (at once: two batches of one
# file that end together cannot each see the other still open); once no other open batch
# reads the file, its bytes expire with its record again, or go now if the record is gone
# (deleted or expired).
RELEASE_INPUT_SCRIPT = (
    _OTHER_OPEN_BATCH_READS_LUA
    + """
redis.call('ZREM', KEYS[1], ARGV[3])
if other_open_batch_reads() then return 0 end
local left = redis.call('PTTL', KEYS[2])
if left == -2 then
  redis.call('DEL', KEYS[3])
elseif left == -1 then
  redis.call('PERSIST', KEYS[3])
else
  redis.call('PEXPIRE', KEYS[3], left)
end
return 1
"""
)


def input_in_use_args(file_id: str, leaving_out: str = "") -> list[str]:
    return [file_id, batch_key(""), leaving_out]


# A batch record outlives its completion window by this much whatever ``FILE_TTL_SEC`` is (it
# is kept as long as a file, but a short file TTL must not lose a batch that still runs).
BATCH_RECORD_MARGIN_SEC = 86400


def batch_record_ttl(file_ttl: int, batch_expiry: int, output_expires_after: int | None) -> int:
    return max(file_ttl, output_expires_after or 0, batch_expiry + BATCH_RECORD_MARGIN_SEC)
