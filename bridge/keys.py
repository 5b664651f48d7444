"""Every Redis key the bridge writes is named here, and nowhere else (RQ names its own ``rq:`` keys)."""

from __future__ import annotations

PREFIX = "ob:"


def seen(identity: str) -> str:
    """Marks an event identity as recorded, for the dedupe window."""
    return f"{PREFIX}seen:{identity}"


def event_job_id(identity: str) -> str:
    """The RQ job id of the job an event produced: derived from the event, so a retry cannot make a second one."""
    return f"ev-{identity}"


def events() -> str:
    """The event log's routing lane: one JSON line per accepted queued/taken/forwarded/closed webhook, oldest first,
    read by ``process_events`` jobs before the other lane (``bridge.eventlog``)."""
    return f"{PREFIX}events"


def events_other() -> str:
    """The event log's other lane: lines of applied events that do not route (agent messages), read only when the
    routing lane is empty."""
    return f"{PREFIX}events:other"


def events_pending() -> str:
    """Set while a ``process_events`` job is queued: later events ride on it instead of making another."""
    return f"{PREFIX}events:pending"


def events_job_template() -> str:
    """The RQ job hash of a ``process_events`` job, copied by the append script for each new job."""
    return f"{PREFIX}events:job-template"


def events_job_sequence() -> str:
    """Counter that numbers ``process_events`` jobs."""
    return f"{PREFIX}events:job-seq"


def events_batch(owner: str) -> str:
    """Lines a job has claimed from the routing lane and not finished yet."""
    return f"{PREFIX}events:batch:{owner}"


def events_other_batch(owner: str) -> str:
    """Lines a job has claimed from the other lane and not finished yet."""
    return f"{PREFIX}events:other:batch:{owner}"


def events_batches() -> str:
    """Sorted set of batch owners by claim time, so a batch whose job was lost can be returned to the log."""
    return f"{PREFIX}events:batches"


def budget_window(route: str) -> str:
    """Sliding window (sorted set of call times) of the optional cap ``ROCKETCHAT_CALLS_PER_MINUTE`` for one route."""
    return f"{PREFIX}budget:{route}"


def budget_block(route: str) -> str:
    """Set while Rocket.Chat has rate-limited ``route``; expires at its ``X-RateLimit-Reset``."""
    return f"{PREFIX}budget-block:{route}"


def rate_limit(route: str) -> str:
    """Hash: what Rocket.Chat's ``X-RateLimit-*`` headers said of one route (limit, remaining, reset, or none)."""
    return f"{PREFIX}ratelimit:{route}"


def rate_limit_routes() -> str:
    """Set of the routes whose rate limit was learned (read by ``/metrics`` and ``omnibridge doctor``)."""
    return f"{PREFIX}ratelimit-routes"


def lease(name: str) -> str:
    """A lease (``bridge.lease``): held by one process at a time, renewed while it works, expiring when it dies."""
    return f"{PREFIX}lease:{name}"


def lease_fence() -> str:
    """Counter that numbers leases as they are granted (the fence of each)."""
    return f"{PREFIX}lease-fence"


def take_in_flight(room_id: str) -> str:
    """Set (under the room's lease) just before ``inquiries.take``/``room.forward`` is sent, until it has answered.

    A router that finds it set while holding the room's lease knows an earlier holder's call may still be on its way
    (its lease lapsed): it leaves the room alone until the key expires, after the longest a call can take."""
    return f"{PREFIX}in-flight:{room_id}"


def tick_due() -> str:
    """Exists until the next periodic tick is due (set NX by the ticker that runs a tick)."""
    return f"{PREFIX}tick-due"


def tick_last() -> str:
    """Epoch seconds when the last tick started."""
    return f"{PREFIX}tick-last"


def wake() -> str:
    """Sorted set: work deferred until a time (``routing`` when a budget or Rocket.Chat was not available)."""
    return f"{PREFIX}wake"


def cached(name: str) -> str:
    """A cached Rocket.Chat answer (the agent directory, departments, server version)."""
    return f"{PREFIX}cache:{name}"


def agent_load() -> str:
    """Hash: agent id -> open chats the bridge knows of (from webhooks and reservations)."""
    return f"{PREFIX}load"


def cache_failed(name: str) -> str:
    """Set for a moment after a refresh of ``cached(name)`` failed, so other processes serve stale meanwhile."""
    return f"{PREFIX}cache-failed:{name}"


def room_agent() -> str:
    """Hash: open room id -> the agent the bridge counts it against."""
    return f"{PREFIX}room-agent"


def closed_room(room_id: str) -> str:
    """Marks a room as closed, so a late 'taken' event for it does not count against an agent."""
    return f"{PREFIX}closed:{room_id}"


def metrics() -> str:
    """Hash: counter name and labels (JSON) -> total, shared by every process."""
    return f"{PREFIX}metrics"


def last_assigned() -> str:
    """Hash: agent id -> epoch seconds of their last reservation (for rotation and tie-breaks)."""
    return f"{PREFIX}last-assigned"


def pending_prefix() -> str:
    """Prefix of per-agent sorted sets of External Service reservations (token -> expiry ms)."""
    return f"{PREFIX}pending:"


def waiting(department_id: str | None) -> str:
    """Sorted set of rooms waiting for an agent in one department ('-' for none), by priority then arrival."""
    return f"{waiting_prefix()}{department_id or '-'}"


def waiting_prefix() -> str:
    """Prefix of the per-department waiting sets (the bound on waiting chats counts them all in one script)."""
    return f"{PREFIX}waiting:"


def waiting_departments() -> str:
    """Set of departments that have a waiting sorted set."""
    return f"{PREFIX}waiting-departments"


def waiting_chat(room_id: str) -> str:
    """Hash: what routing needs to know about a waiting room (department, inquiry, visitor, attempts...)."""
    return f"{PREFIX}chat:{room_id}"


def decisions(kind: str, record_id: str) -> str:
    """List of decisions (JSON) of one record, oldest first, bounded and expiring: ``kind`` is ``chat`` (a room),
    ``voice`` (a voice request) or ``external`` (an External Service department), a word of ours, so no input can
    name another kind's record (``bridge.decisions``)."""
    return f"{PREFIX}decisions:{kind}:{record_id}"


def decision_index(kind: str) -> str:
    """Sorted set: the record ids of one kind by expiry time, to cap how many records a kind keeps."""
    return f"{PREFIX}decisions-index:{kind}"


def voice_queued() -> str:
    """Sorted set: voice request ids enqueued and not started yet, by enqueue time (the cap in total)."""
    return f"{PREFIX}voice-queued"


def voice_queued_by(token_digest: str) -> str:
    """Sorted set: the same, for one API token (a digest of it: tokens are never stored)."""
    return f"{PREFIX}voice-queued:{token_digest}"


def voice_tokens() -> str:
    """Set of the token digests with a ``voice_queued_by`` set (the tokens that passed the API's check)."""
    return f"{PREFIX}voice-tokens"


def recent_decisions() -> str:
    """Capped list of the latest decisions across rooms (JSON), newest first."""
    return f"{PREFIX}recent-decisions"


def visitor_agent(visitor_id: str) -> str:
    """The agent who last served a visitor, and when (for the previous-agent strategy)."""
    return f"{PREFIX}visitor-agent:{visitor_id}"


def unavailable_agent(agent_id: str) -> str:
    """Set for a while after Rocket.Chat said the agent is offline, until the directory catches up."""
    return f"{PREFIX}agent-unavailable:{agent_id}"


def room_lease(room_id: str) -> str:
    """Name of the lease held by the one router working on a room right now (take, or forward)."""
    return f"room:{room_id}"


def recheck(room_id: str) -> str:
    """Set by a router that skipped a claimed room, so the claim holder looks at it once more."""
    return f"{PREFIX}recheck:{room_id}"


def reconcile_due() -> str:
    """Exists while the last load reconciliation is recent enough."""
    return f"{PREFIX}reconcile-due"


def external_answer(query_digest: str) -> str:
    """The answer given to one External Service query, shared by its parallel copies for a moment."""
    return f"{PREFIX}external:{query_digest}"


def room_since() -> str:
    """Hash: room id -> when (epoch ms) it was counted on its current agent."""
    return f"{PREFIX}room-since"


def recover_due() -> str:
    """Exists while the last look for queued inquiries the bridge missed is recent enough."""
    return f"{PREFIX}recover-due"


def awaiting() -> str:
    """Sorted set: served rooms whose agent has not answered yet, by deadline (epoch seconds)."""
    return f"{PREFIX}awaiting"


def awaiting_room(room_id: str) -> str:
    """Hash: who must answer a room, since when, and who already had it."""
    return f"{PREFIX}awaiting:{room_id}"


def replied(room_id: str) -> str:
    """The agent who last wrote in a room (kept briefly, in case the 'taken' event is processed after it)."""
    return f"{PREFIX}replied:{room_id}"


def load_known() -> str:
    """Exists once the load book was built from Rocket.Chat; gone if Redis lost its data (then rebuilt)."""
    return f"{PREFIX}load-known"


def pending_agents() -> str:
    """Set of agents that ever had a pending reservation (bounded by the team), so counts need no key scan."""
    return f"{PREFIX}pending-agents"


def timeline(bucket_start: int) -> str:
    """Hash: chats routed and the sum of their waits in one time bucket (epoch seconds of its start), expiring."""
    return f"{PREFIX}timeline:{bucket_start}"
