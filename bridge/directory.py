"""The agent directory: who could take work, from Rocket.Chat, cached in Redis so Rocket.Chat is asked rarely.

Source of the list (``AGENT_SOURCE``):
- ``available``: ``GET omnichannel/agents/available`` (4.5 to 7.x). It lists livechat agents *without a VoIP
  extension* (or with the one asked for), with no presence filter and no departments; presence is filtered here
  and departments come from the department endpoints (cached for ``DEPARTMENTS_TTL_SECONDS``).
- ``users``: ``GET livechat/users/agent?onlyAvailable=true&showIdleAgents=...`` (6.x to 8.x), already filtered on
  presence, with departments on newer servers.
- ``auto`` (default): ``available`` on 7.x and older, ``users`` on 8.x (read from ``GET /api/info``) or as soon as
  ``agents/available`` answers 404.

One cache entry per query (the extension filter); the department filter is applied to the cached list, so one
Rocket.Chat call serves every department. Open-chat counts are not part of the entry: they are joined from the
load book at read time, so chats taken and closed (webhooks) show without a refetch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import redis

from bridge import endpoints
from bridge.agents import Agent, presence_problem
from bridge.cache import SharedCache
from bridge.errors import NotFound
from bridge.load import LoadBook
from bridge.rocketchat import RocketChat
from bridge.settings import Settings

log = logging.getLogger("bridge.directory")

VERSION_TTL = 600.0


@dataclass(frozen=True, slots=True)
class Listing:
    agents: list[Agent]
    load: dict[str, int] = field(default_factory=dict)
    stale: bool = False
    age: float = 0.0
    source: str = ""

    def can_take_work(self, accept_idle: bool) -> list[Agent]:
        return [agent for agent in self.agents if presence_problem(agent, accept_idle) is None]

    def in_department(self, department_id: str | None) -> list[Agent]:
        if department_id is None:
            return list(self.agents)
        return [agent for agent in self.agents if department_id in agent.departments]


class AgentDirectory:
    def __init__(
        self,
        settings: Settings,
        connection: redis.Redis,
        rocketchat: Callable[[], RocketChat],
        cache: SharedCache | None = None,
    ) -> None:
        self.settings = settings
        self.rocketchat = rocketchat  # built on first use: the web process may never need it
        self.cache = cache or SharedCache(connection)
        self.load = LoadBook(connection)

    def agents(self, extension: str | None = None, wait_max: float = 30.0) -> Listing:
        source = self.source()
        name = f"agents:{source}:{extension or '-'}"
        cached = self.cache.get(
            name,
            lambda: [a.to_dict() for a in self._fetch(source, extension)],
            ttl=self.settings.directory_ttl_seconds,
            stale_max=self.settings.directory_stale_seconds,
            wait_max=wait_max,
        )
        agents = [Agent.from_dict(item) for item in cached.value]
        return Listing(agents, self.load.counts(), stale=cached.stale, age=cached.age, source=source)

    def peek(self, extension: str | None = None) -> tuple[Listing | None, bool]:
        """The cached listing without calling Rocket.Chat, and whether it is due for a refresh."""
        source = self.settings.agent_source
        if source == "auto":
            detected = self.cache.peek("agent-source")
            if detected is None:
                return None, True
            source = str(detected.value)
        cached = self.cache.peek(f"agents:{source}:{extension or '-'}")
        if cached is None or cached.age > self.settings.directory_ttl_seconds + self.settings.directory_stale_seconds:
            return None, True
        agents = [Agent.from_dict(item) for item in cached.value]
        stale = cached.age > self.settings.directory_ttl_seconds
        return Listing(agents, self.load.counts(), stale=stale, age=cached.age, source=source), stale

    def source(self) -> str:
        if self.settings.agent_source != "auto":
            return self.settings.agent_source
        return str(self.cache.get("agent-source", self._detect_source, ttl=VERSION_TTL, stale_max=86_400.0).value)

    def _detect_source(self) -> str:
        version = endpoints.server_version(self.rocketchat())
        major = int(version.split(".", 1)[0]) if version.split(".", 1)[0].isdigit() else 0
        source = "users" if major >= 8 else "available"
        log.info("Rocket.Chat %s: agent directory uses %s", version, source)
        return source

    def _fetch(self, source: str, extension: str | None) -> list[Agent]:
        rc = self.rocketchat()
        if source == "available":
            try:
                agents = endpoints.available_agents(rc, include_extension=extension or "")
            except NotFound:
                log.warning("agents/available answered 404 (removed in Rocket.Chat 8.0); using livechat/users/agent")
                self.cache.put("agent-source", "users", ttl=VERSION_TTL)
                return endpoints.livechat_agents(rc)
            return self._with_departments(agents)
        agents = endpoints.livechat_agents(rc)
        if any(agent.departments for agent in agents):
            return agents
        return self._with_departments(agents)

    def _with_departments(self, agents: list[Agent]) -> list[Agent]:
        members = self.cache.get(
            "departments",
            lambda: endpoints.department_members(self.rocketchat()),
            ttl=self.settings.departments_ttl_seconds,
            stale_max=self.settings.directory_stale_seconds,
        ).value
        served: dict[str, list[str]] = {}
        for department_id, agent_ids in members.items():
            for agent_id in agent_ids:
                served.setdefault(agent_id, []).append(department_id)
        return [replace(agent, departments=tuple(sorted(served.get(agent.id, ())))) for agent in agents]
