"""RQ job entry points: thin, idempotent, plain JSON arguments in, a short readable outcome out."""

from __future__ import annotations

import logging
import uuid

from rq import get_current_job

from bridge import keys
from bridge.errors import RocketChatError
from bridge.events import ChatClosed, ChatForwarded, ChatQueued, ChatTaken, Event, MessageSent, event_from_dict
from workers.context import WorkerContext, current

log = logging.getLogger("workers.jobs")


def process_events() -> str:
    """Apply the event log in batches (``bridge.eventlog``), then route what the batch made routable."""
    ctx = current()
    job = get_current_job()
    ctx.redis.delete(keys.events_pending())  # from now on, a new event makes a new job (no lost wake-up)
    return apply_log(ctx, job.id if job is not None else f"inline-{uuid.uuid4().hex}")


def apply_log(ctx: WorkerContext, owner: str) -> str:
    """Claim, apply and finish batches until the log is empty; drain the routing queue after each batch.

    A Rocket.Chat failure while routing does not stop the events from being applied (they are in Redis either
    way); it is raised at the end so that RQ retries the job and the routing with it.
    """
    applied, outcomes, failure = 0, [], None
    while lines := ctx.batches.claim(owner):
        effects = Effects()
        for line in lines:
            apply_event(ctx, event_from_dict(line), effects)
        ctx.batches.finish(owner)
        applied += len(lines)
        try:
            outcomes.append(route_after(ctx, effects))
        except RocketChatError as error:
            failure = error
    if failure is not None:
        raise failure
    return f"{applied} event(s) applied; " + ("; ".join(outcomes) or "nothing to route")


class Effects:
    """What a batch of events changed: departments with new chats, and whether capacity was freed anywhere."""

    def __init__(self) -> None:
        self.departments: set[str | None] = set()
        self.freed = False


def apply_event(ctx: WorkerContext, event: Event, effects: Effects) -> str:
    """Apply one event to Redis's state (idempotent: applying it twice changes nothing more). No routing here."""
    if isinstance(event, ChatQueued):
        added = ctx.router.enqueue(event)
        effects.departments.add(event.department_id)
        return f"chat {event.room_id} {'entered' if added else 'was already in'} the queue"
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
    return "nothing to route"


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


def drain() -> str:
    """Route whatever waiting chats can be routed now (scheduled, or after capacity appeared)."""
    return current().router.drain()


def route_voice(request_id: str, extension: str, department_id: str | None) -> str:
    """``POST /voice/route``: associate the extension with an available agent."""
    from bridge.voice import route_extension

    ctx = current()
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
    """Every ``TICK_SECONDS`` (enqueued by the workers' tickers): route what waits, recover queued inquiries the
    bridge missed, re-route unanswered chats, and check the load against Rocket.Chat when due."""
    ctx = current()
    ctx.redis.delete(keys.tick_pending())
    _catch_up_events(ctx)
    if not ctx.settings.rocketchat_url:
        return ctx.router.drain()
    try:
        return _tick(ctx)
    except RocketChatError as error:
        # The next tick tries again; a failed tick job would only fill RQ's failed registry.
        level = logging.WARNING if error.transient else logging.ERROR
        log.log(level, "tick: %s", error)
        return f"tick stopped: {error}"


def _catch_up_events(ctx: WorkerContext) -> None:
    """The safety net of the event log: return batches whose job was lost, and apply a log no job will read."""
    returned = ctx.batches.sweep()
    if returned:
        log.warning("tick: %d event(s) of a lost batch returned to the event log", returned)
    if ctx.batches.backlog() and not ctx.redis.exists(keys.events_pending()):
        try:
            log.info("tick: %s", apply_log(ctx, f"tick-{uuid.uuid4().hex}"))
        except RocketChatError as error:
            log.warning("tick: events applied, routing stopped: %s", error)


def _tick(ctx: WorkerContext) -> str:
    outcome = ctx.router.drain() if ctx.router.waiting.count() else "nothing waiting"
    if ctx.redis.set(keys.recover_due(), "1", nx=True, ex=ctx.settings.inquiry_reconcile_seconds):
        from bridge.reconcile import recover_queued

        outcome += "; " + recover_queued(ctx.rocketchat(), ctx.router)
    if ctx.answers.enabled:
        from bridge.noanswer import reroute_unanswered

        outcome += "; " + reroute_unanswered(ctx.router, ctx.answers)
    if ctx.redis.set(keys.reconcile_due(), "1", nx=True, ex=ctx.settings.load_reconcile_seconds):
        from bridge.reconcile import reconcile_load

        outcome += "; " + reconcile_load(ctx.rocketchat(), ctx.load)
    return outcome


def reroute_chat(room_id: str, department_id: str | None, reason: str) -> str:
    """Forward a served chat to another agent (``room.forward``), excluding whoever already had it."""
    from bridge.forwarding import reroute

    return reroute(current().router, room_id, department_id, (), reason).text
