"""Agents as the bridge sees them: one small normalised record, whatever Rocket.Chat endpoint they came from.

``agents/available`` returns whole user documents with no projection, ``livechat/users/agent`` a pick of fields;
both become an ``Agent`` here, and nothing else of the document (e-mails, services, settings) is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# Rocket.Chat's user presence values; "busy" counts as online (Users.findOneOnlineAgentById: status != offline).
ONLINE_STATUSES = frozenset({"online", "busy"})


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    username: str
    name: str | None = None
    status: str | None = None  # online | away | busy | offline
    status_livechat: str | None = None  # available | not-available
    max_chats: int | None = None  # livechat.maxNumberSimultaneousChat; None = not set, 0 = no limit
    extension: str | None = None
    departments: tuple[str, ...] = field(default=())
    last_routing_time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["departments"] = list(self.departments)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Agent:
        return cls(**{**data, "departments": tuple(data.get("departments") or ())})


def parse_max_chats(value: object) -> int | None:
    """``maxNumberSimultaneousChat`` arrives as a number, a numeric string, an empty string or not at all."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def normalise_agent(raw: object, departments: tuple[str, ...] = ()) -> Agent | None:
    """One Rocket.Chat user document -> ``Agent``; None when it has no usable ``_id``/``username``."""
    if not isinstance(raw, Mapping):
        return None
    agent_id, username = _text(raw.get("_id")), _text(raw.get("username"))
    if agent_id is None or username is None:
        return None
    livechat = raw.get("livechat") if isinstance(raw.get("livechat"), Mapping) else {}
    listed = raw.get("departments")
    if isinstance(listed, list) and not departments:
        # livechat/users/agent on newer servers: [{_id, departmentId, ...}] or plain ids
        departments = tuple(
            d
            for d in (item.get("departmentId") if isinstance(item, Mapping) else item for item in listed)
            if isinstance(d, str) and d
        )
    return Agent(
        id=agent_id,
        username=username,
        name=_text(raw.get("name")),
        status=_text(raw.get("status")),
        status_livechat=_text(raw.get("statusLivechat")),
        max_chats=parse_max_chats(livechat.get("maxNumberSimultaneousChat")),  # type: ignore[union-attr]
        extension=_text(raw.get("extension")),
        departments=departments,
        last_routing_time=_text(raw.get("lastRoutingTime")),
    )


def presence_problem(agent: Agent, accept_idle: bool) -> str | None:
    """Why the agent cannot take work now, or None if they can.

    Rocket.Chat assigns only agents whose ``statusLivechat`` is ``available`` and whose ``status`` is not offline;
    ``away`` (idle) agents only when ``Livechat_enabled_when_agent_idle``, mirrored here by ``ACCEPT_IDLE_AGENTS``.
    """
    if agent.status_livechat != "available":
        return "not available for livechat"
    if agent.status in ONLINE_STATUSES:
        return None
    if agent.status == "away":
        return None if accept_idle else "away (idle agents are not accepted)"
    return "offline"
