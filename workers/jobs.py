"""RQ job entry points: thin, idempotent, plain JSON arguments in, a short readable outcome out."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from rq import get_current_job

from bridge import keys
from bridge.errors import RocketChatError, RocketChatUnavailable
from bridge.eventlog import APPLY_SECONDS, PENDING_SECONDS
from bridge.events import ChatClosed, ChatForwarded, ChatQueued, ChatTaken, Event, MessageSent, event_from_dict
from bridge.waiting import ADDED, ALREADY_WAITING, FULL
from workers.context import WorkerContext, current

log = logging.getLogger("workers.jobs")

STUCK_SECONDS = 10
NOTHING_TO_ROUTE = "nothing to route"
OUTCOMES_KEPT = 10
ADMITTED = {
    ADDED: "entered the queue",
    ALREADY_WAITING: "was already in the queue",
    FULL: "refused: WAITING_MAX_CHATS chats are waiting (the reconciler adds it once there is room)",
}


def process_events() -> str:
    """Apply the event log in batches (``bridge.eventlog``), then route what the batch made routable."""
    ctx = current()
    job = get_current_job()
    ctx.redis.delete(keys.events_pending())  # from now on, a new event makes a new job (no lost wake-up)
    return apply_log(ctx, job.id if job is not None else f"inline-{uuid.uuid4().hex}")


def apply_log(ctx: WorkerContext, owner: str, budget: float = APPLY_SECONDS) -> str:
    """Claim, apply and finish batches until the log is empty; drain the routing queue after each batch.

    Each claim takes the routing lane's lines first and the other lane's only while the routing lane is empty, so a
    queued chat waits for at most the batch in hand, whatever the other lane holds (``bridge.eventlog``). After
    ``budget`` seconds the rest of the log goes to a new job (``hand_over``), well inside RQ's job timeout.

    A Rocket.Chat failure while routing does not stop the events from being applied (they are in Redis either
    way); it is raised at the end so that RQ retries the job and the routing with it.
    """
    applied, outcomes, failure = 0, [], None
    deadline = time.monotonic() + budget
    while lines := ctx.batches.claim(owner):
        effects = Effects()
        events = [event_from_dict(line) for line in lines]
        replies = [(e.room_id, e.agent_id) for e in events if isinstance(e, MessageSent) and e.agent_id]
        if len(replies) == len(events):  # a batch of the other lane: agent messages, applied in two round trips
            ctx.answers.replied_many(replies)
        else:
            for event in events:
                apply_event(ctx, event, effects)
        ctx.batches.finish(owner)
        applied += len(lines)
        try:
            outcome = route_after(ctx, effects)
            if outcome != NOTHING_TO_ROUTE:
                outcomes.append(outcome)
        except RocketChatError as error:
            failure = error
        if time.monotonic() >= deadline:
            if ctx.batches.backlog():
                handed = ctx.batches.hand_over(ctx.settings)
                outcomes.append(f"{budget:.0f} s spent: the rest is left to {'a new' if handed else 'the pending'} job")
            break
    if failure is not None:
        raise failure
    if len(outcomes) > OUTCOMES_KEPT:  # a flood makes hundreds of batches: the job's result stays short
        outcomes = [f"{len(outcomes) - OUTCOMES_KEPT} earlier routing pass(es)", *outcomes[-OUTCOMES_KEPT:]]
    return f"{applied} event(s) applied; " + ("; ".join(outcomes) or NOTHING_TO_ROUTE)


class Effects:
    """What a batch of events changed: departments with new chats, and whether capacity was freed anywhere."""

    def __init__(self) -> None:
        self.departments: set[str | None] = set()
        self.freed = False


def apply_event(ctx: WorkerContext, event: Event, effects: Effects) -> str:
    """Apply one event to Redis's state (idempotent: applying it twice changes nothing more). No routing here."""
    if isinstance(event, ChatQueued):
        admitted = ctx.router.enqueue(event)
        effects.departments.add(event.department_id)
        return f"chat {event.room_id} {ADMITTED[admitted]}"
    if isinstance(event, ChatClosed):
        previous = ctx.load.close(event.room_id)
        ctx.router.waiting.remove(event.room_id)
        ctx.answers.stop(event.room_id)
        effects.freed = effects.freed or previous is not None
        return f"room {event.room_id} closed; released from agent {previous or '(none)'}"
    if isinstance(event, ChatTaken | ChatForwarded):
        if event.agent is None:
            return f"room {event.room_id}: no agent in {event.TYPE}, load unchanged"
        previous = ctx.load.assign(event.room_id, event.agent.id)
        ctx.router.served_elsewhere(event.room_id, event.agent.id)
        ctx.answers.start(event.room_id, event.agent.id, event.department_id)
        effects.freed = effects.freed or bool(previous and previous != event.agent.id)
        return f"room {event.room_id} served by {event.agent.id} (was {previous or 'nobody'})"
    if isinstance(event, MessageSent) and event.agent_id:
        ctx.answers.replied(event.room_id, event.agent_id)
        return f"agent {event.agent_id} answered in room {event.room_id}"
    return f"{event.TYPE} for room {event.room_id}: nothing to apply"


def route_after(ctx: WorkerContext, effects: Effects) -> str:
    if effects.freed:
        return ctx.router.drain() if ctx.router.waiting.count() else "nothing waiting"
    if effects.departments:
        return ctx.router.drain(sorted(effects.departments, key=lambda d: d or ""))
    return NOTHING_TO_ROUTE


def route_chat(event: dict) -> str:
    """A job of its own per ``LivechatSessionQueued`` before the event log (jobs left by that version)."""
    return _apply_one(event)


def update_load(event: dict) -> str:
    """A job of its own per taken/forwarded/closed event before the event log (jobs left by that version)."""
    return _apply_one(event)


def agent_message(event: dict) -> str:
    """A job of its own per agent ``Message`` before the event log (jobs left by that version)."""
    return _apply_one(event)


def _apply_one(event: dict) -> str:
    ctx, effects = current(), Effects()
    outcome = apply_event(ctx, event_from_dict(event), effects)
    return f"{outcome}; {route_after(ctx, effects)}"


def route_voice(request_id: str, extension: str, department_id: str | None) -> str:
    """``POST /voice/route``: associate the extension with an available agent."""
    from bridge.voice import route_extension
    from bridge.voicequeue import VoiceSlots

    ctx = current()
    VoiceSlots.from_settings(ctx.redis, ctx.settings).release(request_id)  # no longer queued: frees its slot
    return route_extension(
        request_id,
        extension,
        department_id,
        ctx.directory,
        ctx.rocketchat,
        ctx.load,
        ctx.router.decisions,
        ctx.router.policy(department_id),
    )


def refresh_directory() -> str:
    """Asked by the web process when the External Service found the cached directory due for a refresh."""
    listing = current().directory.agents()
    return f"directory: {len(listing.agents)} agents{' (stale)' if listing.stale else ''}"


def tick() -> str:
    """A tick queued as a job (by a version whose tickers enqueued them): runs one like the tickers do."""
    return run_tick(current())


def run_tick(ctx: WorkerContext) -> str:
    """One tick, run by a worker's ticker thread every ``TICK_SECONDS`` and when routing asked to be woken: route
    what waits, recover queued inquiries the bridge missed, re-route unanswered chats, and check the load against
    Rocket.Chat when due. One tick at a time in the whole deployment (the lease ``tick``); each step that calls
    Rocket.Chat on a schedule of its own runs under its own lease too."""
    with ctx.leases.holding("tick") as lease:
        if lease is None:
            return "a tick is running elsewhere"
        ctx.redis.set(keys.tick_last(), f"{time.time():.3f}")
        ctx.metrics.inc("omnibridge_ticks")
        _catch_up_events(ctx)
        if not ctx.settings.rocketchat_url:
            return ctx.router.drain()
        try:
            return _tick(ctx)
        except RocketChatError as error:
            # The next tick tries again.
            level = logging.WARNING if error.transient else logging.ERROR
            log.log(level, "tick: %s", error)
            return f"tick stopped: {error}"


def _catch_up_events(ctx: WorkerContext) -> None:
    """The safety net of the event log: return batches whose job was lost, and apply a log no job will read."""
    returned = ctx.batches.sweep()
    if returned:
        log.warning("tick: %d event(s) of a lost batch returned to the event log", returned)
    if ctx.batches.backlog() and _no_job_will_read_it(ctx):
        try:
            log.info("tick: %s", apply_log(ctx, f"tick-{uuid.uuid4().hex}"))
        except RocketChatError as error:
            log.warning("tick: events applied, routing stopped: %s", error)


def _no_job_will_read_it(ctx: WorkerContext) -> bool:
    """No ``process_events`` job is pending, or the pending one has not started for ``STUCK_SECONDS`` (its worker
    died after Redis handed it the job, for one). Applying the log is safe alongside a job: each claims its own lines.
    """
    ttl = ctx.redis.ttl(keys.events_pending())
    return ttl < 0 or PENDING_SECONDS - ttl > STUCK_SECONDS


def _tick(ctx: WorkerContext) -> str:
    from bridge.noanswer import reroute_unanswered
    from bridge.reconcile import reconcile_load, recover_queued

    outcome = ctx.router.drain() if ctx.router.waiting.count() else "nothing waiting"
    outcome += _when_due(
        ctx,
        keys.recover_due(),
        ctx.settings.inquiry_reconcile_seconds,
        "recover-queued",
        lambda: recover_queued(ctx.rocketchat(), ctx.router),
    )
    if ctx.answers.enabled:
        outcome += "; " + reroute_unanswered(ctx.router, ctx.answers)
    outcome += _when_due(
        ctx,
        keys.reconcile_due(),
        ctx.settings.load_reconcile_seconds,
        "load-reconcile",
        lambda: reconcile_load(ctx.rocketchat(), ctx.load),
    )
    return outcome


def _when_due(ctx: WorkerContext, due_key: str, period: int, lease_name: str, step: Callable[[], str]) -> str:
    """Run ``step`` at most once per ``period`` in the deployment, under its lease; if Rocket.Chat could not be
    asked now (a rate limit, an outage), it is due again at the next tick."""
    if not ctx.redis.set(due_key, "1", nx=True, ex=period):
        return ""
    with ctx.leases.holding(lease_name) as lease:
        if lease is None:
            return ""
        try:
            return "; " + step()
        except RocketChatUnavailable:
            ctx.redis.delete(due_key)
            raise
