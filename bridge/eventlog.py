"""The event log: how an accepted webhook reaches a worker, in batches.

Web side (``EventLog``): one Lua call writes, for each event, its dedupe mark and one compact JSON line on the
list ``ob:events``, and, unless one is already pending, one RQ job ``process_events`` that will drain the list.
Mark, line and job are written together or not at all, so a crash cannot leave an event marked as seen without
a job that will read it. ``GroupCommit`` gathers the webhooks that arrive while a call is in flight into the next
call: one Redis round trip for many concurrent webhooks, and none added when the service is idle.

Why not one RQ job per event (the first design): a job hash is ~20 fields and RQ spends ~57 Redis commands per
job; at a few hundred chats per second that work, not routing, was the ceiling (README, *Benchmarks*).

Worker side (``EventBatches``): a job claims up to ``BATCH_MAX`` lines at a time by moving them, in one script,
from the log to a list of its own (``ob:events:batch:<job id>``), applies them, then deletes that list. A worker
that dies mid-batch leaves the list behind: RQ retries the job (same id), which finds its batch and applies it
again (every event is idempotent to apply); a batch whose job never came back is moved to the front of the log
by ``sweep`` (the periodic tick) after ``ORPHAN_SECONDS``.

No lost wake-up: a job deletes the pending flag *before* it claims, so an event that lands after the flag is
gone makes a new job, and an event that landed before is in the log the job is about to read. The flag expires
after ``PENDING_SECONDS`` and the tick drains the log too, so even a job lost with its queue costs one tick.

The job template is written once into Redis (``ob:events:job-template``) from RQ's own ``create_job``; the script
copies it for each new job. A Redis that lost it (restart without persistence) makes the script answer "no
template", and the caller writes it again and retries.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from typing import Any

import redis
import redis.asyncio
from rq import Queue
from rq.utils import now, utcformat

from bridge import keys
from bridge.events import Event
from bridge.jobqueue import FAILURE_TTL_SECONDS, JOB_TIMEOUT_SECONDS, make_queue, retry_policy
from bridge.settings import Settings

PROCESS_EVENTS = "workers.jobs.process_events"
BATCH_MAX = 200
GROUP_MAX = 256  # webhooks per Lua call at most
PENDING_SECONDS = 300
ORPHAN_SECONDS = 600
RESULT_TTL_SECONDS = 600
JOB_ID_PREFIX = "events-"

NO_TEMPLATE = -1

# KEYS: log, pending flag, template, job sequence, queue key, RQ's set of queues, seen keys...
# ARGV: dedupe ttl, pending ttl, job key prefix, job id prefix, timestamp, event lines... (one per seen key)
_APPEND_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 0 then
  return {-1}
end
local answers = {}
local added = 0
for i = 7, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('RPUSH', KEYS[1], ARGV[i - 1])
    answers[#answers + 1] = 1
    added = added + 1
  else
    answers[#answers + 1] = 0
  end
end
if added > 0 and redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  local id = ARGV[4] .. redis.call('INCR', KEYS[4])
  local job = ARGV[3] .. id
  redis.call('HSET', job, unpack(redis.call('HGETALL', KEYS[3])))
  redis.call('HSET', job, 'created_at', ARGV[5], 'enqueued_at', ARGV[5])
  redis.call('RPUSH', KEYS[5], id)
  redis.call('SADD', KEYS[6], KEYS[5])
end
return answers
"""

# KEYS: log, the job's batch list, the set of open batches. ARGV: limit, now, job id.
_CLAIM_SCRIPT = """
local mine = redis.call('LRANGE', KEYS[2], 0, -1)
if #mine > 0 then
  return mine
end
local lines = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #lines == 0 then
  return lines
end
redis.call('LTRIM', KEYS[1], #lines, -1)
redis.call('RPUSH', KEYS[2], unpack(lines))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return lines
"""

# KEYS: log, the batch list, the set of open batches. ARGV: job id. Puts the batch back at the front, in order.
_RETURN_SCRIPT = """
local lines = redis.call('LRANGE', KEYS[2], 0, -1)
for i = #lines, 1, -1 do
  redis.call('LPUSH', KEYS[1], lines[i])
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return #lines
"""


def encode(event: Event) -> str:
    return json.dumps(event.to_dict(), separators=(",", ":"))


def job_template(settings: Settings) -> dict[str, Any]:
    """The hash of a ``process_events`` job, made by RQ's own code (the script copies it for each new job)."""
    queue = make_queue(settings, redis.Redis())  # never connects: only builds the hash
    job = queue.create_job(
        PROCESS_EVENTS,
        args=(),
        job_id="template",
        timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=RESULT_TTL_SECONDS,
        failure_ttl=FAILURE_TTL_SECONDS,
        retry=retry_policy(settings),
        description="process_events",
    )
    job.enqueued_at = now()
    return {name: _field(value) for name, value in job.to_dict().items()}


def _field(value: object) -> bytes | int | str:
    if isinstance(value, bytes | int):
        return value
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


class EventLog:
    """Web side, on the async client: append events (deduplicated) and make sure a job will process them."""

    def __init__(self, settings: Settings, connection: redis.asyncio.Redis) -> None:
        self.settings = settings
        self.connection = connection
        self.script = connection.register_script(_APPEND_SCRIPT)
        self.template = job_template(settings)
        self.queue_key = make_queue(settings, redis.Redis()).key

    async def append(self, events: list[Event], identities: list[str] | None = None) -> list[bool]:
        """True for each event that is new (now in the log), False for each already recorded (a redelivery).

        ``identities``: the events' ``identity``, when the caller has computed them already (a digest each)."""
        seen = [keys.seen(identity) for identity in identities or [event.identity for event in events]]
        answers = await self._call(events, seen)
        if answers == [NO_TEMPLATE]:
            await self.write_template()
            answers = await self._call(events, seen)
        return [bool(answer) for answer in answers]

    async def write_template(self) -> None:
        await self.connection.hset(keys.events_job_template(), mapping=self.template)

    async def _call(self, events: list[Event], seen: list[str]) -> list[int]:
        return await self.script(
            keys=[
                keys.events(),
                keys.events_pending(),
                keys.events_job_template(),
                keys.events_job_sequence(),
                self.queue_key,
                Queue.redis_queues_keys,
                *seen,
            ],
            args=[
                self.settings.dedupe_ttl_seconds,
                PENDING_SECONDS,
                Queue.job_class.redis_job_namespace_prefix,
                JOB_ID_PREFIX,
                utcformat(now()),
                *(encode(event) for event in events),
            ],
        )


class GroupCommit:
    """Concurrent ``append`` calls share one Redis call: whoever arrives while a call is in flight goes in the next.

    At idle an event is written at once (a group of one); under load the groups grow by themselves to what
    arrived during one round trip, so throughput rises without a timer adding latency.
    """

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._waiting: list[tuple[Event, str, asyncio.Future[bool]]] = []
        self._writing = False

    async def append(self, event: Event, identity: str) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, identity, future))
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().create_task(self._write())
        return await future

    async def _write(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:GROUP_MAX], self._waiting[GROUP_MAX:]
                try:
                    answers = await self.log.append([e for e, _, _ in group], [i for _, i, _ in group])
                except BaseException as error:  # every caller of the group learns of it (and spools its event)
                    for _, _, future in group:
                        if not future.done():
                            future.set_exception(error)
                    if not isinstance(error, Exception):
                        raise
                    continue
                for (_, _, future), answer in zip(group, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._writing = False


class EventBatches:
    """Worker side: claim a batch of the log for a job, finish it, and return batches whose job was lost."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._claim = connection.register_script(_CLAIM_SCRIPT)
        self._return = connection.register_script(_RETURN_SCRIPT)

    def claim(self, owner: str, limit: int = BATCH_MAX) -> list[dict[str, Any]]:
        """This owner's unfinished batch if it has one (a retried job), else up to ``limit`` lines of the log."""
        lines = self._claim(
            keys=[keys.events(), keys.events_batch(owner), keys.events_batches()], args=[limit, time.time(), owner]
        )
        return [json.loads(line) for line in lines]

    def finish(self, owner: str) -> None:
        pipe = self.connection.pipeline(transaction=True)
        pipe.delete(keys.events_batch(owner))
        pipe.zrem(keys.events_batches(), owner)
        pipe.execute()

    def sweep(self, older_than: float = ORPHAN_SECONDS) -> int:
        """Put batches claimed more than ``older_than`` seconds ago back at the front of the log; lines returned."""
        owners = self.connection.zrangebyscore(keys.events_batches(), "-inf", time.time() - older_than)
        returned = 0
        for owner in (o.decode() for o in owners):
            returned += self._return(
                keys=[keys.events(), keys.events_batch(owner), keys.events_batches()], args=[owner]
            )
        return returned

    def backlog(self) -> int:
        return int(self.connection.llen(keys.events()))
