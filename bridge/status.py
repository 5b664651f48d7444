"""What the bridge sees right now, from Redis alone (it never calls Rocket.Chat): one snapshot, two views.

``snapshot()`` gathers, as plain JSON-safe dicts: agents (presence, open chats against capacity, departments,
voice extension), chats waiting and for how long, the latest decisions with their candidates, chats routed and
their waits over the last minutes (``bridge.timeline``), and RQ's job counts with the latest failures. The live
view (``GET /dashboard/data``) serves it as JSON; ``omnibridge status`` renders it in the terminal every
``--interval`` seconds (``--once`` prints one screen).
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rq.job import Job

from bridge import timeline
from bridge.agents import presence_problem
from bridge.decisions import DecisionLog
from bridge.directory import AgentDirectory
from bridge.jobqueue import make_queue, make_voice_queue
from bridge.logs import MASK, secrets_of
from bridge.routing import capacity_of
from bridge.settings import Settings
from bridge.waiting import WaitingQueue

LAST_MINUTE = 60


def _no_rocketchat() -> None:
    raise RuntimeError("status reads Redis only")


def snapshot(
    settings: Settings,
    connection: redis.Redis,
    now: float | None = None,
    decisions: int = 12,
    waiting: int = 20,
    failed: int = 5,
) -> dict[str, Any]:
    """Everything both views show, at ``now``; ``decisions``, ``waiting`` and ``failed`` bound the lists."""
    now = time.time() if now is None else now
    buckets = timeline.recent(connection, now)
    last_minute = buckets[-(LAST_MINUTE // timeline.BUCKET_SECONDS) :]
    routed = sum(b["routed"] for b in last_minute)
    wait_sum = sum(b["mean_wait"] * b["routed"] for b in last_minute if b["routed"])
    return {
        "at": round(now, 3),
        **_agents(settings, connection),
        "waiting": _waiting(connection, now, waiting),
        "decisions": [  # newest first by time: parallel takes may record a moment out of order
            {**decision, "ago": round(max(0.0, now - float(decision.get("at", now))), 1)}
            for decision in sorted(
                DecisionLog.from_settings(connection, settings).recent(decisions),
                key=lambda d: float(d.get("at", 0)),
                reverse=True,
            )
        ],
        "timeline": {
            "bucket_seconds": timeline.BUCKET_SECONDS,
            "buckets": buckets,
            "routed_last_minute": routed,
            "mean_wait_last_minute": round(wait_sum / routed, 3) if routed else None,
        },
        "jobs": _jobs(settings, connection, failed),
    }


def _agents(settings: Settings, connection: redis.Redis) -> dict[str, Any]:
    listing, _ = AgentDirectory(settings, connection, _no_rocketchat).peek()  # type: ignore[arg-type]
    if listing is None:
        return {"directory": None, "agents": []}
    agents = []
    for agent in sorted(listing.agents, key=lambda a: a.username):
        problem = presence_problem(agent, settings.accept_idle_agents)
        agents.append(
            {
                "id": agent.id,
                "username": agent.username,
                "name": agent.name,
                "status": agent.status,
                "status_livechat": agent.status_livechat,
                "available": problem is None,
                "presence": problem or f"available ({agent.status})",
                "load": listing.load.get(agent.id, 0),
                "capacity": capacity_of(agent, settings.default_max_chats),  # 0 = no limit
                "departments": list(agent.departments),
                "extension": agent.extension,
            }
        )
    directory = {"source": listing.source, "age": round(listing.age, 1), "stale": listing.stale}
    return {"directory": directory, "agents": agents}


def _waiting(connection: redis.Redis, now: float, limit: int) -> dict[str, Any]:
    queue = WaitingQueue(connection)
    chats = [
        {
            "room_id": chat.room_id,
            "department_id": chat.department_id,
            "waiting_seconds": round(max(0.0, now - chat.queued_at), 1),
            "priority": chat.priority,
            "attempts": chat.attempts,
            "last_outcome": chat.last_outcome,
        }
        for chat in queue.oldest()[:limit]
    ]
    return {"count": queue.count(), "chats": chats}


def _jobs(settings: Settings, connection: redis.Redis, limit: int) -> dict[str, Any]:
    queue = make_queue(settings, connection)
    registry = queue.failed_job_registry
    latest = []
    ids = registry.get_job_ids(0, limit - 1, desc=True) if limit > 0 else []
    for job_id, job in zip(ids, Job.fetch_many(ids, connection, serializer=queue.serializer), strict=True):
        result = job.latest_result() if job else None
        lines = (result.exc_string or "").strip().splitlines() if result else []
        latest.append(
            {
                "id": job_id,
                "function": job.func_name if job else None,
                "ended_at": job.ended_at.timestamp() if job and job.ended_at else None,
                "last_line": _masked(settings, lines[-1]) if lines else None,
            }
        )
    voice = make_voice_queue(settings, connection)
    return {
        "queued": queue.count + voice.count,
        "voice_queued": voice.count,
        "running": queue.started_job_registry.count + voice.started_job_registry.count,
        "failed": registry.count + voice.failed_job_registry.count,
        "latest_failed": latest,
    }


def _masked(settings: Settings, text: str) -> str:
    """An exception line may quote an upstream answer: no configured secret leaves through it."""
    for secret in secrets_of(settings):
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text


def render(settings: Settings, connection: redis.Redis, now: float | None = None) -> str:
    now = time.time() if now is None else now
    seen = snapshot(settings, connection, now, decisions=8, waiting=8, failed=0)
    lines = [f"omnibridge status  {time.strftime('%H:%M:%S', time.localtime(now))}", ""]
    directory = seen["directory"]
    if directory is None:
        lines.append("agents: no directory cached yet (a worker fetches it when it routes)")
    else:
        age = f"{directory['age']:.0f} s old{', stale' if directory['stale'] else ''}"
        lines.append(f"agents ({directory['source']}, {age})")
        lines.append(f"  {'agent':<20} {'presence':<34} {'load':>9}  departments")
        for agent in seen["agents"]:
            shown = f"{agent['load']}/{agent['capacity'] or '∞'}"
            departments = ", ".join(agent["departments"]) or "-"
            lines.append(f"  {agent['username']:<20} {agent['presence']:<34} {shown:>9}  {departments}")
    lines += ["", f"chats waiting: {seen['waiting']['count']}"]
    for chat in seen["waiting"]["chats"]:
        lines.append(
            f"  {chat['room_id']:<20} department {chat['department_id'] or '-':<18} {chat['waiting_seconds']:6.0f} s"
        )
    lines += ["", "latest decisions"]
    for decision in seen["decisions"]:
        who = decision.get("agent_username") or decision.get("agent_id") or "-"
        lines.append(
            f"  {decision['ago']:5.0f} s ago  {decision.get('kind', '?'):<8} {_record_of(decision):<20} "
            f"{decision.get('outcome', ''):<16} {who}"
        )
    jobs = seen["jobs"]
    lines += [
        "",
        f"jobs: {jobs['queued']} queued, {jobs['running']} running, {jobs['failed']} failed (omnibridge failed)",
    ]
    return "\n".join(lines)


def _record_of(decision: dict[str, Any]) -> str:
    """What a decision is about: the room of a chat; the request of a voice decision; the department of an External
    Service query (``-``: none). Decisions from before records had kinds carry only ``room_id``."""
    return str(decision.get("room_id") or decision.get("record_id") or "")


def watch(settings: Settings, connection: redis.Redis, interval: float) -> None:
    while True:
        screen = render(settings, connection)
        print("\033[2J\033[H" + screen, flush=True)
        time.sleep(interval)
