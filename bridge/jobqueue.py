"""The only module that enqueues RQ jobs: which event makes which job, and how it is written to Redis.

Jobs take one JSON-safe argument (``Event.to_dict()``), are serialised with RQ's ``JSONSerializer`` (so nothing
that is not plain JSON can slip into a job, and no secret is ever an argument: events carry none), and carry a
``Retry`` so that a job whose worker died (SIGKILL, lost dyno) is retried by RQ's abandoned-job cleanup.

The web process records an event and creates its job in one Lua script: the dedupe mark and the job are written
together or not at all, so a crash between the two cannot leave an event marked as seen without its job (which
would turn Rocket.Chat's redelivery into a silent loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.serializers import JSONSerializer
from rq.utils import now

from bridge import keys
from bridge.events import Event
from bridge.settings import Settings

ROUTE_CHAT = "workers.jobs.route_chat"
UPDATE_LOAD = "workers.jobs.update_load"
AGENT_MESSAGE = "workers.jobs.agent_message"
ROUTE_VOICE = "workers.jobs.route_voice"
REFRESH_DIRECTORY = "workers.jobs.refresh_directory"
TICK = "workers.jobs.tick"

# Event type -> job. Every type Rocket.Chat sends is a key; None means "answered 200, deliberately ignored".
EVENT_JOBS: dict[str, str | None] = {
    "LivechatSessionStart": None,  # a queued room also sends LivechatSessionQueued, which is what we route
    "LivechatSessionQueued": ROUTE_CHAT,
    "LivechatSessionTaken": UPDATE_LOAD,
    "LivechatSessionForwarded": UPDATE_LOAD,
    "LivechatSession": UPDATE_LOAD,
    "LivechatEdit": None,  # edits of closed rooms: nothing to route
    "Message": AGENT_MESSAGE,  # agent messages stop the no-answer clock; visitor messages are ignored
    "LeadCapture": None,
    "LivechatOfflineMessage": None,  # no room exists, nobody to route to
}

JOB_TIMEOUT_SECONDS = 60
RESULT_TTL_SECONDS = 3600
FAILURE_TTL_SECONDS = 7 * 86_400
RETRY_INTERVALS = [1, 5, 15, 30, 60]

# KEYS: seen key, job key, queue key, RQ's set of queues. ARGV: dedupe ttl, job id, job hash fields...
_RECORD_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[1]) == false then
  return 0
end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], KEYS[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class Recorded:
    outcome: str  # "accepted" | "duplicate" | "ignored"
    job_id: str | None = None
    job: str | None = None
    spooled: bool = False


def job_for(event: Event) -> str | None:
    if event.TYPE == "LivechatSession" and getattr(event, "is_test", False):
        return None
    if event.TYPE == "Message" and getattr(event, "agent_id", None) is None:
        return None
    return EVENT_JOBS[event.TYPE]


def make_queue(settings: Settings, connection: redis.Redis) -> Queue:
    return Queue(settings.queue_name, connection=connection, serializer=JSONSerializer)


def _retry(settings: Settings) -> Retry | None:
    if settings.job_retries <= 0:
        return None
    return Retry(max=settings.job_retries, interval=RETRY_INTERVALS[: settings.job_retries])


class EventRecorder:
    """Web side: dedupe an event and create its job in one atomic step, on the async Redis client."""

    def __init__(self, settings: Settings, connection: redis.asyncio.Redis) -> None:
        self.settings = settings
        self.connection = connection
        self.script = connection.register_script(_RECORD_SCRIPT)
        # Used only to build job hashes with RQ's own code; it never opens a connection.
        self.queue = make_queue(settings, redis.Redis())

    async def record(self, event: Event) -> Recorded:
        func = job_for(event)
        if func is None:
            return Recorded("ignored")
        job_id = keys.event_job_id(event.identity)
        job = self.queue.create_job(
            func,
            args=(event.to_dict(),),
            job_id=job_id,
            timeout=JOB_TIMEOUT_SECONDS,
            result_ttl=RESULT_TTL_SECONDS,
            failure_ttl=FAILURE_TTL_SECONDS,
            retry=_retry(self.settings),
            description=f"{func.rsplit('.', 1)[1]} {event.TYPE} room={event.room_id}",
        )
        job.enqueued_at = now()
        fields: list[object] = []
        for name, value in job.to_dict().items():
            fields += [name, value]
        created = await self.script(
            keys=[keys.seen(event.identity), job.key, self.queue.key, Queue.redis_queues_keys],
            args=[self.settings.dedupe_ttl_seconds, job_id, *fields],
        )
        return Recorded("accepted" if created else "duplicate", job_id=job_id, job=func)


def enqueue(
    queue: Queue,
    settings: Settings,
    func: str,
    *args: object,
    job_id: str | None = None,
    unique: bool = False,
    result_ttl: int = RESULT_TTL_SECONDS,
) -> str | None:
    """Enqueue a job (plain JSON-safe arguments only). With ``unique``, None if a job with that id exists."""
    try:
        job = queue.enqueue_call(
            func,
            args=args,
            job_id=job_id,
            timeout=JOB_TIMEOUT_SECONDS,
            result_ttl=result_ttl,
            failure_ttl=FAILURE_TTL_SECONDS,
            retry=_retry(settings),
            unique=unique,
        )
    except DuplicateJobError:
        return None
    return job.id
