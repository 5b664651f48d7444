"""Answering Rocket.Chat's External Service (``Livechat_Routing_Method = External``) from the directory.

Rocket.Chat asks ``GET <Livechat_External_Queue_URL>?departmentId=&ignoreAgentId=`` with
``X-RocketChat-Secret-Token`` and reads only ``username`` from the JSON answer (docs/rocketchat.md §4). It sends no room
id and fires 10 identical requests in parallel for one routing, using the first non-empty answer. So:
- the answer comes from the cached directory and the load book; Rocket.Chat is never called in the request path
  (a stale or missing cache entry asks a worker to refresh it and is answered from what there is);
- the first of the identical requests computes the answer and makes one *pending* reservation; the others, for
  ``SHARE_SECONDS``, get the same answer. Two chats of one department routed within that moment are
  indistinguishable here (Rocket.Chat says nothing else); the ``taken`` webhooks then count each room correctly;
- no agent: ``{}``, which Rocket.Chat treats as empty (it then tries its other requests, then says no agent).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import redis

from bridge import keys
from bridge.decisions import DecisionLog
from bridge.directory import AgentDirectory
from bridge.load import LoadBook
from bridge.routing import Policy, Request, choose
from bridge.settings import Settings

SHARE_SECONDS = 3.0
WAIT_FOR_FIRST = 2.0
PENDING = b"pending"


class ExternalQueue:
    def __init__(
        self,
        settings: Settings,
        connection: redis.Redis,
        directory: AgentDirectory,
        load: LoadBook,
        decisions: DecisionLog,
        request_refresh: Any,
    ) -> None:
        self.settings = settings
        self.connection = connection
        self.directory = directory
        self.load = load
        self.decisions = decisions
        self.request_refresh = request_refresh  # callable: ask a worker to refresh the directory

    def answer(self, department_id: str | None, ignore_agent_id: str | None) -> dict[str, str]:
        digest = hashlib.sha256(f"{department_id or ''}|{ignore_agent_id or ''}".encode()).hexdigest()[:24]
        key = keys.external_answer(digest)
        share_ms = int(SHARE_SECONDS * 1000)
        if self.connection.set(key, PENDING, nx=True, px=share_ms):
            answer = self._choose(department_id, ignore_agent_id)
            self.connection.set(key, json.dumps(answer), px=share_ms)
            return answer
        deadline = time.monotonic() + WAIT_FOR_FIRST
        while time.monotonic() < deadline:
            raw = self.connection.get(key)
            if raw is None:
                break
            if raw != PENDING:
                return dict(json.loads(raw))
            time.sleep(0.005)
        return {}

    def _choose(self, department_id: str | None, ignore_agent_id: str | None) -> dict[str, str]:
        listing, due = self.directory.peek()
        if due:
            self.request_refresh()
        decision: dict[str, Any] = {
            "kind": "external",
            "department_id": department_id,
            "ignore_agent_id": ignore_agent_id,
        }
        record_id = department_id or "-"
        if listing is None:
            self.decisions.record(
                "external",
                record_id,
                {
                    **decision,
                    "outcome": "no agent",
                    "detail": "the agent directory is not cached yet; a refresh was asked",
                },
            )
            return {}
        policy = Policy(
            self.settings.strategy_for(department_id),
            self.settings.default_max_chats,
            self.settings.accept_idle_agents,
            float(self.settings.previous_agent_window_seconds),
        )
        request = Request(department_id, excluded=frozenset({ignore_agent_id} if ignore_agent_id else ()))
        choice = choose(listing.agents, self.load.counts(), self.load.last_assigned(), request, policy, time.time())
        reservation = self.load.reserve_pending([(c.id, c.capacity) for c in choice.ranked])
        decision |= {
            "strategy": choice.strategy,
            "candidates": [c.to_dict() for c in choice.candidates],
            "directory": {"source": listing.source, "stale": listing.stale, "age": round(listing.age, 1)},
        }
        if reservation.outcome != "reserved":
            self.decisions.record(
                "external", record_id, {**decision, "outcome": "no agent", "detail": "nobody can take it"}
            )
            return {}
        username = next(c.username for c in choice.ranked if c.id == reservation.agent_id)
        self.decisions.record(
            "external",
            record_id,
            {**decision, "outcome": "answered", "agent_id": reservation.agent_id, "agent_username": username},
        )
        return {"_id": reservation.agent_id or "", "username": username}
