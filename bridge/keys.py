"""Every Redis key the bridge writes is named here, and nowhere else (RQ names its own ``rq:`` keys)."""

from __future__ import annotations

PREFIX = "ob:"


def seen(identity: str) -> str:
    """Marks an event identity as recorded, for the dedupe window."""
    return f"{PREFIX}seen:{identity}"


def event_job_id(identity: str) -> str:
    """The RQ job id of the job an event produced: derived from the event, so a retry cannot make a second one."""
    return f"ev-{identity}"
