"""RQ jobs: which event is applied by which job function, and how jobs are enqueued.

Jobs take plain JSON-safe arguments, are serialised with RQ's ``JSONSerializer`` (so nothing that is not plain
JSON can slip into a job, and no secret is ever an argument: events carry none), and carry a ``Retry`` so that a
job whose worker died (SIGKILL, lost dyno) is retried by RQ's abandoned-job cleanup.

Webhooks do not make a job each: they are appended to the event log and applied in batches by
``process_events`` jobs (``bridge.eventlog``). ``EVENT_JOBS`` names the job function that applies each type, which
``process_events`` calls for each event of a batch (and which ran as a job of its own per event before the log).
"""

from __future__ import annotations

import redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.serializers import JSONSerializer

from bridge.events import Event
from bridge.settings import Settings

ROUTE_CHAT = "workers.jobs.route_chat"
UPDATE_LOAD = "workers.jobs.update_load"
AGENT_MESSAGE = "workers.jobs.agent_message"
ROUTE_VOICE = "workers.jobs.route_voice"
REFRESH_DIRECTORY = "workers.jobs.refresh_directory"
TICK = "workers.jobs.tick"

# Event type -> the function that applies it. Every type Rocket.Chat sends is a key; None means "answered 200,
# deliberately ignored" (nothing is written to Redis).
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


def job_for(event: Event) -> str | None:
    if event.TYPE == "LivechatSession" and getattr(event, "is_test", False):
        return None
    if event.TYPE == "Message" and getattr(event, "agent_id", None) is None:
        return None
    return EVENT_JOBS[event.TYPE]


def make_queue(settings: Settings, connection: redis.Redis) -> Queue:
    return Queue(settings.queue_name, connection=connection, serializer=JSONSerializer)


def voice_queue_name(settings: Settings) -> str:
    """Voice requests wait on a queue of their own, which workers read after the chats' (``workers.worker``)."""
    return voice_queue_of(settings.queue_name)


def voice_queue_of(queue_name: str) -> str:
    return f"{queue_name}-voice"


def make_voice_queue(settings: Settings, connection: redis.Redis) -> Queue:
    return Queue(voice_queue_name(settings), connection=connection, serializer=JSONSerializer)


def queue_names(settings: Settings) -> list[str]:
    """Every queue of the bridge, in the order workers read them: chats (and everything else) first, then voice."""
    return [settings.queue_name, voice_queue_name(settings)]


def retry_policy(settings: Settings) -> Retry | None:
    if settings.job_retries <= 0:
        return None
    return Retry(max=settings.job_retries, interval=RETRY_INTERVALS[: settings.job_retries])


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
            retry=retry_policy(settings),
            unique=unique,
        )
    except DuplicateJobError:
        return None
    return job.id
