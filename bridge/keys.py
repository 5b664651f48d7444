"""Every Redis key the bridge writes is named here, and nowhere else (RQ names its own ``rq:`` keys)."""

from __future__ import annotations

PREFIX = "ob:"


def seen(identity: str) -> str:
    """Marks an event identity as recorded, for the dedupe window."""
    return f"{PREFIX}seen:{identity}"


def event_job_id(identity: str) -> str:
    """The RQ job id of the job an event produced: derived from the event, so a retry cannot make a second one."""
    return f"ev-{identity}"


def budget_window(route: str) -> str:
    """Sliding window (sorted set of call times) of the Rocket.Chat call budget for one route."""
    return f"{PREFIX}budget:{route}"


def budget_block(route: str) -> str:
    """Set while Rocket.Chat has rate-limited ``route``; expires at its ``X-RateLimit-Reset``."""
    return f"{PREFIX}budget-block:{route}"


def cached(name: str) -> str:
    """A cached Rocket.Chat answer (the agent directory, departments, server version)."""
    return f"{PREFIX}cache:{name}"


def cache_lock(name: str) -> str:
    """Single-flight lock: held by the one process that is refreshing ``cached(name)``."""
    return f"{PREFIX}cache-lock:{name}"


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
