"""RQ job entry points: thin, idempotent, plain JSON arguments in, a short readable outcome out."""

from __future__ import annotations

import logging

from bridge.events import event_from_dict

log = logging.getLogger("workers.jobs")


def route_chat(event: dict) -> str:
    """``LivechatSessionQueued``: find an agent for the chat."""
    chat = event_from_dict(event)
    return f"queued chat {chat.room_id} received"


def update_load(event: dict) -> str:
    """``LivechatSessionTaken`` / ``Forwarded`` / ``LivechatSession``: keep agents' open-chat counts."""
    change = event_from_dict(event)
    return f"{change.TYPE} for room {change.room_id} received"
