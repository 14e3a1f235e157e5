"""Speech-to-text jobs: the request fields and the Redis layout of a long file cut into parts.

Shared by the API (which stores the upload as a blob and submits the job) and the workers.
The uploaded audio lives in the blob store (:mod:`inferq.blobs`); the job's request carries
only its id (``blob``). A job whose audio is longer than about ``AUDIO_CHUNK_SEC`` is cut into
**parts** (time ranges ending at pauses) by its coordinator, the worker thread running the
job's task:

* ``parts_key`` (hash): ``plan`` (JSON: ranges, duration, coordinator), ``total``, ``done``,
  and per part ``i``: ``c:i`` the worker that claimed it, ``r:i`` its result (JSON segments
  and words with absolute timestamps), ``w:i`` the worker that recorded it, ``f:i`` a failure.
  The results are dropped when the job ends; ``plan`` and ``w:i`` stay until it expires.
* ``pending_key`` (list): part indices nobody has claimed yet.

Every worker of the model can take parts: the coordinator sends one *helper* task per part
on the model's queue, and a worker receiving one claims parts (``CLAIM_SCRIPT``) until none
are left. A part is recorded once (``RECORD_SCRIPT``), whatever redeliveries happen. A part
whose claiming worker stopped heart-beating is put back (``RELEASE_SCRIPT``). The plan grows
by ``PUBLISH_SCRIPT``, which refuses a publisher whose view of it is out of date.
"""

from __future__ import annotations

from inferq.protocol import job_key

TASK_HELP = "inferq.audio.part"  # args: [job_id]; take parts of that job until none are left

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})  # stored as a JSON string, served as text/plain
TIMESTAMP_GRANULARITIES = ("segment", "word")


def parts_key(job_id: str) -> str:
    return f"{job_key(job_id)}:parts"


def pending_key(job_id: str) -> str:
    return f"{job_key(job_id)}:pending"


# KEYS[1] parts, KEYS[2] pending, KEYS[3] job; ARGV[1] worker. The index of the claimed part;
# -1 when the job is not running any more, -2 when no part is left, -3 when none is pending
# but the plan is still growing (no ``total`` yet: its coordinator publishes more parts).
CLAIM_SCRIPT = """
if redis.call('HGET', KEYS[3], 'status') ~= 'running' then return -1 end
local index = redis.call('LPOP', KEYS[2])
if not index then
  if redis.call('HEXISTS', KEYS[1], 'total') == 1 then return -2 end
  return -3
end
redis.call('HSET', KEYS[1], 'c:' .. index, ARGV[1])
return tonumber(index)
"""

# KEYS[1] parts, KEYS[2] job; ARGV[1] index, ARGV[2] worker, ARGV[3] result JSON, ARGV[4] field
# prefix ('r' for a result, 'f' for a failure). Returns the number of settled parts, -1 if this
# part was settled already (a duplicate run), -2 if the job is not running any more.
RECORD_SCRIPT = """
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return -2 end
local i = ARGV[1]
if redis.call('HEXISTS', KEYS[1], 'r:' .. i) == 1 or redis.call('HEXISTS', KEYS[1], 'f:' .. i) == 1
then return -1 end
redis.call('HSET', KEYS[1], ARGV[4] .. ':' .. i, ARGV[3], 'w:' .. i, ARGV[2])
redis.call('HDEL', KEYS[1], 'c:' .. i)
return redis.call('HINCRBY', KEYS[1], 'done', 1)
"""

# KEYS[1] parts, KEYS[2] pending; ARGV[1] index, ARGV[2] the worker believed gone. Puts the
# part back at the head of the pending list if that worker still holds it unsettled; 1 if so.
RELEASE_SCRIPT = """
local i = ARGV[1]
if redis.call('HGET', KEYS[1], 'c:' .. i) ~= ARGV[2] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'r:' .. i) == 1 or redis.call('HEXISTS', KEYS[1], 'f:' .. i) == 1
then return 0 end
redis.call('HDEL', KEYS[1], 'c:' .. i)
redis.call('LPUSH', KEYS[2], i)
return 1
"""

# KEYS[1] parts, KEYS[2] pending; ARGV[1] the parts the publisher believes planned so far,
# ARGV[2] the plan JSON, ARGV[3] its part count, ARGV[4] ``total`` ('' while the plan grows),
# ARGV[5] the keys' TTL. Stores the plan and queues the new parts' indices only if the stored
# plan still holds ARGV[1] parts (none stored: 0), and returns 1; else 0: another coordinator
# of the job (a redelivery while this one still planned) extended the plan first.
PUBLISH_SCRIPT = """
local stored = redis.call('HGET', KEYS[1], 'plan')
local planned = 0
if stored then planned = #cjson.decode(stored)['ranges'] end
if planned ~= tonumber(ARGV[1]) then return 0 end
if planned == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'done', 0)
end
redis.call('HSET', KEYS[1], 'plan', ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'total', ARGV[4]) end
for i = planned, tonumber(ARGV[3]) - 1 do redis.call('RPUSH', KEYS[2], i) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""
