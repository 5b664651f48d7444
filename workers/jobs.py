"""RQ job entry points: thin, idempotent, plain JSON arguments in, a short readable outcome out."""

from __future__ import annotations

import logging

from bridge import keys
from bridge.errors import RocketChatError
from bridge.events import ChatClosed, ChatForwarded, ChatQueued, ChatTaken, MessageSent, event_from_dict
from workers.context import WorkerContext, current

log = logging.getLogger("workers.jobs")


def route_chat(event: dict) -> str:
    """``LivechatSessionQueued``: put the chat in the routing queue and route what can be routed now."""
    chat = event_from_dict(event)
    assert isinstance(chat, ChatQueued)
    return current().router.chat_queued(chat)


def update_load(event: dict) -> str:
    """``LivechatSessionTaken`` / ``Forwarded`` / ``LivechatSession``: move the room between agents' counts.

    Idempotent: the load book records which agent serves which room, so a second run changes nothing. A served
    chat leaves the routing queue (whoever took it); a closed one frees capacity, so waiting chats are routed.
    """
    change = event_from_dict(event)
    ctx = current()
    if isinstance(change, ChatClosed):
        previous = ctx.load.close(change.room_id)
        ctx.router.waiting.remove(change.room_id)
        ctx.answers.stop(change.room_id)
        routed = ctx.router.drain() if ctx.router.waiting.count() else "nothing waiting"
        return f"room {change.room_id} closed; released from agent {previous or '(none)'}; {routed}"
    if isinstance(change, ChatTaken | ChatForwarded) and change.agent is not None:
        previous = ctx.load.assign(change.room_id, change.agent.id)
        ctx.router.waiting.remove(change.room_id)
        ctx.answers.start(change.room_id, change.agent.id, change.department_id)
        freed = previous and previous != change.agent.id
        routed = ctx.router.drain() if freed and ctx.router.waiting.count() else "no capacity freed"
        return f"room {change.room_id} served by {change.agent.id} (was {previous or 'nobody'}); {routed}"
    return f"room {change.room_id}: no agent in {change.TYPE}, load unchanged"


def agent_message(event: dict) -> str:
    """An agent ``Message``: the agent answered, so the room's no-answer clock stops."""
    message = event_from_dict(event)
    assert isinstance(message, MessageSent) and message.agent_id
    current().answers.replied(message.room_id, message.agent_id)
    return f"agent {message.agent_id} answered in room {message.room_id}"


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
    if not ctx.settings.rocketchat_url:
        return ctx.router.drain()
    try:
        return _tick(ctx)
    except RocketChatError as error:
        # The next tick tries again; a failed tick job would only fill RQ's failed registry.
        level = logging.WARNING if error.transient else logging.ERROR
        log.log(level, "tick: %s", error)
        return f"tick stopped: {error}"


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
