"""RQ job entry points: thin, idempotent, plain JSON arguments in, a short readable outcome out."""

from __future__ import annotations

import logging

from bridge.events import ChatClosed, ChatForwarded, ChatTaken, event_from_dict
from workers.context import current

log = logging.getLogger("workers.jobs")


def route_chat(event: dict) -> str:
    """``LivechatSessionQueued``: find an agent for the chat."""
    chat = event_from_dict(event)
    return f"queued chat {chat.room_id} received"


def update_load(event: dict) -> str:
    """``LivechatSessionTaken`` / ``Forwarded`` / ``LivechatSession``: move the room between agents' counts.

    Idempotent: the load book records which agent serves which room, so a second run changes nothing.
    """
    change = event_from_dict(event)
    load = current().load
    if isinstance(change, ChatClosed):
        previous = load.close(change.room_id)
        return f"room {change.room_id} closed; released from agent {previous or '(none)'}"
    if isinstance(change, ChatTaken | ChatForwarded) and change.agent is not None:
        previous = load.assign(change.room_id, change.agent.id)
        return f"room {change.room_id} served by {change.agent.id} (was {previous or 'nobody'})"
    return f"room {change.room_id}: no agent in {change.TYPE}, load unchanged"
