"""``omnibridge status``: what the bridge sees right now, from Redis alone (it never calls Rocket.Chat).

Agents (presence, open chats against capacity), chats waiting and for how long, the latest decisions, and RQ's
job counts, refreshed in the terminal every ``--interval`` seconds (``--once`` prints one screen).
"""

from __future__ import annotations

import time

import redis

from bridge.agents import presence_problem
from bridge.decisions import DecisionLog
from bridge.directory import AgentDirectory
from bridge.jobqueue import make_queue
from bridge.routing import capacity_of
from bridge.settings import Settings
from bridge.waiting import WaitingQueue


def _no_rocketchat() -> None:
    raise RuntimeError("status reads Redis only")


def render(settings: Settings, connection: redis.Redis, now: float | None = None) -> str:
    now = time.time() if now is None else now
    directory = AgentDirectory(settings, connection, _no_rocketchat)  # type: ignore[arg-type]
    listing, _ = directory.peek()
    load = directory.load.counts()
    lines = [f"omnibridge status  {time.strftime('%H:%M:%S', time.localtime(now))}", ""]
    if listing is None:
        lines.append("agents: no directory cached yet (a worker fetches it when it routes)")
    else:
        age = f"{listing.age:.0f} s old{', stale' if listing.stale else ''}"
        lines.append(f"agents ({listing.source}, {age})")
        lines.append(f"  {'agent':<20} {'presence':<34} {'load':>9}  departments")
        for agent in sorted(listing.agents, key=lambda a: a.username):
            problem = presence_problem(agent, settings.accept_idle_agents)
            capacity = capacity_of(agent, settings.default_max_chats)
            shown = f"{load.get(agent.id, 0)}/{capacity or '∞'}"
            presence = problem or f"available ({agent.status})"
            lines.append(f"  {agent.username:<20} {presence:<34} {shown:>9}  {', '.join(agent.departments) or '-'}")
    waiting = WaitingQueue(connection)
    oldest = waiting.oldest()
    lines += ["", f"chats waiting: {waiting.count()}"]
    for chat in oldest[:8]:
        lines.append(f"  {chat.room_id:<20} department {chat.department_id or '-':<18} {now - chat.queued_at:6.0f} s")
    lines += ["", "latest decisions"]
    for decision in DecisionLog(connection, settings.decision_retention_seconds).recent(8):
        who = decision.get("agent_username") or decision.get("agent_id") or "-"
        ago = now - float(decision.get("at", now))
        lines.append(
            f"  {ago:5.0f} s ago  {decision.get('kind', '?'):<8} {decision.get('room_id', ''):<20} "
            f"{decision.get('outcome', ''):<16} {who}"
        )
    queue = make_queue(settings, connection)
    lines += [
        "",
        f"jobs: {queue.count} queued, {queue.started_job_registry.count} running, "
        f"{queue.failed_job_registry.count} failed (omnibridge failed)",
    ]
    return "\n".join(lines)


def watch(settings: Settings, connection: redis.Redis, interval: float) -> None:
    while True:
        screen = render(settings, connection)
        print("\033[2J\033[H" + screen, flush=True)
        time.sleep(interval)
