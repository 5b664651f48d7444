"""The event log: how an accepted webhook reaches a worker, in batches, routing events first.

Two lanes (Redis lists): the **routing lane** ``ob:events`` holds the events routing depends on (queued, taken,
forwarded, closed); the **other lane** ``ob:events:other`` holds the rest of what is applied (agent messages). A
worker claims from the routing lane first and from the other lane only while the routing lane is empty, so a chat
queued during a flood of messages is applied and routed within a batch or two, whatever the other lane holds.

Web side (``EventLog``): one Lua call writes, for each event, its dedupe mark and one compact JSON line on its lane,
and, unless one is already pending, one RQ job ``process_events`` that will drain the log. Mark, line and job are
written together or not at all, so a crash cannot leave an event marked as seen without a job that will read it.
Each lane is bounded (``EVENT_LOG_ROUTING_MAX_LINES``, ``EVENT_LOG_OTHER_MAX_LINES``), checked in the same script:
an event whose lane is at its bound is refused and leaves nothing behind (no mark, no line), so the webhook is
answered 503, Rocket.Chat retries it, and the retry is accepted once there is room. ``GroupCommit`` gathers the
webhooks that arrive while a call is in flight into the next call: one Redis round trip for many concurrent
webhooks, and none added when the service is idle.

Why not one RQ job per event (the first design): a job hash is ~20 fields and RQ spends ~57 Redis commands per
job; at a few hundred chats per second that work, not routing, was the ceiling (README, *Benchmarks*).

Worker side (``EventBatches``): a job claims up to ``BATCH_MAX`` lines of one lane at a time by moving them, in one
script, from the lane to a list of its own (``<lane>:batch:<job id>``), applies them, then deletes that list. A
worker that dies mid-batch leaves the list behind: RQ retries the job (same id), which finds its batch and applies
it again (every event is idempotent to apply); a batch whose job never came back is moved to the front of its lane
by ``sweep`` (the periodic tick) after ``ORPHAN_SECONDS``. A job that has worked ``APPLY_SECONDS`` hands the rest
to a new job (``hand_over``) rather than run into RQ's job timeout.

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
# A finished process_events job is deleted at once: RQ would keep its hash and a result stream (~5.5 KB in all)
# for the TTL, and a flood makes a job every few milliseconds (README, *Bounds*). Failed jobs are kept as any job.
RESULT_TTL_SECONDS = 0
JOB_ID_PREFIX = "events-"
APPLY_SECONDS = 20.0  # a job hands the rest of the log to a new job after this long (RQ's timeout is 60 s)

ROUTING = "routing"
OTHER = "other"
# What routing depends on: a chat enters the queue (queued), leaves it (taken, forwarded, closed), or frees capacity.
ROUTING_TYPES = frozenset(
    {"LivechatSessionQueued", "LivechatSessionTaken", "LivechatSessionForwarded", "LivechatSession"}
)

NO_TEMPLATE = -1


class Appended(enum.IntEnum):
    """What the log answered for one event."""

    DUPLICATE = 0  # recorded already (a redelivery, a concurrent copy): nothing written
    ACCEPTED = 1  # mark and line written
    FULL = 2  # its lane is at its bound: nothing written, answer 503 so that Rocket.Chat retries


class LogFull(Exception):
    """The event's lane of the event log is at its bound; nothing was recorded for it."""

    def __init__(self, lane: str, limit: int) -> None:
        super().__init__(f"the event log's {lane} lane holds its maximum of {limit} lines")
        self.lane = lane
        self.limit = limit


def lane_of(event: Event) -> str:
    return ROUTING if event.TYPE in ROUTING_TYPES else OTHER


# Makes a process_events job unless one is pending: the pending flag, then a copy of the template, queued.
# pending, template, sequence, queue key, RQ's set of queues; pending ttl, job key prefix, job id prefix, timestamp.
_MAKE_JOB = """
local function make_job(pending, template, sequence, queue, queues, pending_ttl, job_prefix, id_prefix, stamp)
  if not redis.call('SET', pending, '1', 'NX', 'EX', pending_ttl) then
    return 0
  end
  local id = id_prefix .. redis.call('INCR', sequence)
  local job = job_prefix .. id
  redis.call('HSET', job, unpack(redis.call('HGETALL', template)))
  redis.call('HSET', job, 'created_at', stamp, 'enqueued_at', stamp)
  redis.call('RPUSH', queue, id)
  redis.call('SADD', queues, queue)
  return 1
end
"""

# KEYS: routing lane, other lane, pending flag, template, job sequence, queue key, RQ's set of queues, seen keys...
# ARGV: dedupe ttl, pending ttl, job key prefix, job id prefix, timestamp, routing lane's bound, other lane's bound,
#       then for each seen key: its event's lane ('r' or 'o') and its line.
# Answers one number per event: 1 accepted, 0 duplicate, 2 refused (its lane is at its bound: nothing written).
_APPEND_SCRIPT = (
    _MAKE_JOB
    + """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return {-1}
end
local lanes = {r = KEYS[1], o = KEYS[2]}
local lengths = {r = redis.call('LLEN', KEYS[1]), o = redis.call('LLEN', KEYS[2])}
local limits = {r = tonumber(ARGV[6]), o = tonumber(ARGV[7])}
local answers = {}
local added = 0
for i = 8, #KEYS do
  local lane = ARGV[6 + 2 * (i - 7)]
  if redis.call('EXISTS', KEYS[i]) == 1 then
    answers[#answers + 1] = 0
  elseif lengths[lane] >= limits[lane] then
    answers[#answers + 1] = 2
  else
    redis.call('SET', KEYS[i], '1', 'EX', ARGV[1])
    redis.call('RPUSH', lanes[lane], ARGV[7 + 2 * (i - 7)])
    lengths[lane] = lengths[lane] + 1
    answers[#answers + 1] = 1
    added = added + 1
  end
end
if added > 0 then
  make_job(KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
end
return answers
"""
)

# KEYS: pending flag, template, job sequence, queue key, RQ's set of queues. ARGV: as make_job's.
_HAND_OVER_SCRIPT = (
    _MAKE_JOB
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return -1
end
return make_job(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

# KEYS: routing lane, other lane, the job's routing batch, the job's other batch, the set of open batches.
# ARGV: limit, now, job id. The job's unfinished batch if it has one; else the routing lane's first lines; else,
# only while the routing lane is empty, the other lane's.
_CLAIM_SCRIPT = """
for batch = 3, 4 do
  local mine = redis.call('LRANGE', KEYS[batch], 0, -1)
  if #mine > 0 then
    return mine
  end
end
for lane = 1, 2 do
  local lines = redis.call('LRANGE', KEYS[lane], 0, tonumber(ARGV[1]) - 1)
  if #lines > 0 then
    redis.call('LTRIM', KEYS[lane], #lines, -1)
    redis.call('RPUSH', KEYS[lane + 2], unpack(lines))
    redis.call('ZADD', KEYS[5], ARGV[2], ARGV[3])
    return lines
  end
end
return {}
"""

# KEYS: routing lane, other lane, the job's routing batch, its other batch, the set of open batches. ARGV: job id.
# Puts each batch back at the front of its own lane, in order.
_RETURN_SCRIPT = """
local returned = 0
for lane = 1, 2 do
  local lines = redis.call('LRANGE', KEYS[lane + 2], 0, -1)
  for i = #lines, 1, -1 do
    redis.call('LPUSH', KEYS[lane], lines[i])
  end
  redis.call('DEL', KEYS[lane + 2])
  returned = returned + #lines
end
redis.call('ZREM', KEYS[5], ARGV[1])
return returned
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
    """Web side, on the async client: append events (deduplicated, bounded per lane) and make sure a job will
    process them."""

    def __init__(self, settings: Settings, connection: redis.asyncio.Redis) -> None:
        self.settings = settings
        self.connection = connection
        self.script = connection.register_script(_APPEND_SCRIPT)
        self.template = job_template(settings)
        self.queue_key = make_queue(settings, redis.Redis()).key

    def limit(self, lane: str) -> int:
        s = self.settings
        return s.event_log_routing_max_lines if lane == ROUTING else s.event_log_other_max_lines

    async def append(self, events: list[Event], identities: list[str] | None = None) -> list[Appended]:
        """For each event: ``ACCEPTED`` (now in the log), ``DUPLICATE`` (already recorded: a redelivery) or ``FULL``
        (its lane is at its bound; nothing was written for it).

        ``identities``: the events' ``identity``, when the caller has computed them already (a digest each)."""
        seen = [keys.seen(identity) for identity in identities or [event.identity for event in events]]
        answers = await self._call(events, seen)
        if answers == [NO_TEMPLATE]:
            await self.write_template()
            answers = await self._call(events, seen)
        return [Appended(answer) for answer in answers]

    async def write_template(self) -> None:
        await self.connection.hset(keys.events_job_template(), mapping=self.template)

    async def _call(self, events: list[Event], seen: list[str]) -> list[int]:
        pairs: list[str] = []
        for event in events:
            pairs += ["r" if lane_of(event) == ROUTING else "o", encode(event)]
        return await self.script(
            keys=[
                keys.events(),
                keys.events_other(),
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
                self.settings.event_log_routing_max_lines,
                self.settings.event_log_other_max_lines,
                *pairs,
            ],
        )


class GroupCommit:
    """Concurrent ``append`` calls share one Redis call: whoever arrives while a call is in flight goes in the next.

    At idle an event is written at once (a group of one); under load the groups grow by themselves to what
    arrived during one round trip, so throughput rises without a timer adding latency.
    """

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._waiting: list[tuple[Event, str, asyncio.Future[Appended]]] = []
        self._writing = False

    async def append(self, event: Event, identity: str) -> Appended:
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
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
    """Worker side: claim a batch of the log for a job (routing lane first), finish it, return batches whose job
    was lost, and hand the log to a new job."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._claim = connection.register_script(_CLAIM_SCRIPT)
        self._return = connection.register_script(_RETURN_SCRIPT)
        self._hand_over = connection.register_script(_HAND_OVER_SCRIPT)

    @staticmethod
    def _keys(owner: str) -> list[str]:
        return [
            keys.events(),
            keys.events_other(),
            keys.events_batch(owner),
            keys.events_other_batch(owner),
            keys.events_batches(),
        ]

    def claim(self, owner: str, limit: int = BATCH_MAX) -> list[dict[str, Any]]:
        """This owner's unfinished batch if it has one (a retried job), else up to ``limit`` lines of the routing
        lane, else (the routing lane is empty) up to ``limit`` lines of the other lane."""
        lines = self._claim(keys=self._keys(owner), args=[limit, time.time(), owner])
        return [json.loads(line) for line in lines]

    def finish(self, owner: str) -> None:
        pipe = self.connection.pipeline(transaction=True)
        pipe.delete(keys.events_batch(owner), keys.events_other_batch(owner))
        pipe.zrem(keys.events_batches(), owner)
        pipe.execute()

    def sweep(self, older_than: float = ORPHAN_SECONDS) -> int:
        """Put batches claimed more than ``older_than`` seconds ago back at the front of their lanes; lines
        returned."""
        owners = self.connection.zrangebyscore(keys.events_batches(), "-inf", time.time() - older_than)
        returned = 0
        for owner in (o.decode() for o in owners):
            returned += self._return(keys=self._keys(owner), args=[owner])
        return returned

    def lanes(self) -> dict[str, int]:
        """Lines waiting in each lane (claimed batches not included)."""
        pipe = self.connection.pipeline(transaction=False)
        pipe.llen(keys.events())
        pipe.llen(keys.events_other())
        routing, other = pipe.execute()
        return {ROUTING: int(routing), OTHER: int(other)}

    def backlog(self) -> int:
        return sum(self.lanes().values())

    def hand_over(self, settings: Settings) -> bool:
        """Make sure a ``process_events`` job will read the log: True if this made one, False if one was pending.

        For a job that stops before the log is empty (``APPLY_SECONDS``): the job deleted the pending flag when it
        started, so without this the rest would wait for an event to arrive or for the tick."""
        queue_key = make_queue(settings, self.connection).key
        for _ in range(2):
            made = self._hand_over(
                keys=[
                    keys.events_pending(),
                    keys.events_job_template(),
                    keys.events_job_sequence(),
                    queue_key,
                    Queue.redis_queues_keys,
                ],
                args=[PENDING_SECONDS, Queue.job_class.redis_job_namespace_prefix, JOB_ID_PREFIX, utcformat(now())],
            )
            if made != NO_TEMPLATE:
                return bool(made)
            self.connection.hset(keys.events_job_template(), mapping=job_template(settings))
        return False
