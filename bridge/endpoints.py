"""The Rocket.Chat endpoints the bridge uses, as functions over the client (which owns URLs and errors).

Paging: ``agents/available`` echoes ``count`` but probably does not enforce it (docs/rocketchat.md §2), so pages are
read until ``total`` items were seen, whatever each page held, with a bound on the number of pages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from bridge.agents import Agent, normalise_agent
from bridge.errors import RocketChatError
from bridge.rocketchat import RocketChat

PAGE_SIZE = 100  # Rocket.Chat's API_Upper_Count_Limit default
MAX_PAGES = 200

AVAILABLE = "/api/v1/omnichannel/agents/available"
USERS_AGENT = "/api/v1/livechat/users/agent"
TAKE = "/api/v1/livechat/inquiries.take"


def server_version(rc: RocketChat) -> str:
    body = rc.request("GET", "/api/info", auth=False)
    version = body.get("version") or (body.get("info") or {}).get("version")
    if not isinstance(version, str):
        raise RocketChatError("Rocket.Chat's /api/info answer has no version", route="GET /api/info")
    return version


def me(rc: RocketChat) -> dict[str, Any]:
    return rc.request("GET", "/api/v1/me")


def _pages(rc: RocketChat, route: str, key: str, params: dict[str, Any], **kwargs: Any) -> Iterator[Any]:
    offset = 0
    for _ in range(MAX_PAGES):
        body = rc.request("GET", route, params={**params, "offset": offset, "count": PAGE_SIZE}, **kwargs)
        items = page_items(body, key)
        if items is None:
            raise RocketChatError(f"Rocket.Chat's answer to GET {route} has no '{key}' list", route=f"GET {route}")
        yield from items
        offset += len(items)
        total = body.get("total")
        if not items or not isinstance(total, int) or offset >= total:
            return
    raise RocketChatError(f"GET {route} kept paging past {MAX_PAGES} pages", route=f"GET {route}")


def page_items(body: dict[str, Any], key: str) -> list[Any] | None:
    """The items of one page; for ``agents`` also the shape the public docs page shows, ``{agent: {...}}``."""
    items = body.get(key)
    if items is None and key == "agents" and isinstance(body.get("agent"), dict):
        return [body["agent"]]
    return items if isinstance(items, list) else None


def available_agents(rc: RocketChat, include_extension: str = "", **kwargs: Any) -> list[Agent]:
    """``GET omnichannel/agents/available`` (4.5 to 7.x): livechat agents with no extension, or with this one.

    It does not filter on presence; callers apply ``presence_problem``.
    """
    params = {"text": "", "includeExtension": include_extension, "sort": json.dumps({"username": 1})}
    return _agents(_pages(rc, AVAILABLE, "agents", params, **kwargs))


def livechat_agents(rc: RocketChat, **kwargs: Any) -> list[Agent]:
    """``GET livechat/users/agent?onlyAvailable=true&showIdleAgents=...`` (6.x to 8.x): the presence-filtered list."""
    params = {
        "onlyAvailable": "true",
        "showIdleAgents": "true" if rc.settings.accept_idle_agents else "false",
        "sort": json.dumps({"username": 1}),
    }
    return _agents(_pages(rc, USERS_AGENT, "users", params, **kwargs))


def _agents(raw: Iterator[Any]) -> list[Agent]:
    agents: dict[str, Agent] = {}
    for item in raw:
        agent = normalise_agent(item)
        if agent is not None:
            agents[agent.id] = agent  # a page overlap must not list an agent twice
    return list(agents.values())


def department_members(rc: RocketChat, **kwargs: Any) -> dict[str, list[str]]:
    """Department id -> ids of its agents, from ``livechat/department`` and ``livechat/department/:_id/agents``."""
    members: dict[str, list[str]] = {}
    for department in _pages(rc, "/api/v1/livechat/department", "departments", {}, **kwargs):
        if not isinstance(department, dict) or not isinstance(department.get("_id"), str):
            continue
        if department.get("enabled") is False:
            continue
        links = _pages(
            rc, "/api/v1/livechat/department/{id}/agents", "agents", {}, path={"id": department["_id"]}, **kwargs
        )
        members[department["_id"]] = [
            link["agentId"] for link in links if isinstance(link, dict) and isinstance(link.get("agentId"), str)
        ]
    return members


def inquiry_for_room(rc: RocketChat, room_id: str) -> dict[str, Any] | None:
    """``GET livechat/inquiries.getOne?roomId=``: the room's inquiry, or None once it is gone."""
    inquiry = rc.request("GET", "/api/v1/livechat/inquiries.getOne", params={"roomId": room_id}).get("inquiry")
    return inquiry if isinstance(inquiry, dict) else None


def take_inquiry(rc: RocketChat, inquiry_id: str, user_id: str) -> None:
    """``POST livechat/inquiries.take`` on behalf of an agent (needs only view-l-room)."""
    rc.request("POST", TAKE, json={"inquiryId": inquiry_id, "userId": user_id})


def forward_room(rc: RocketChat, room_id: str, user_id: str | None = None, department_id: str | None = None) -> None:
    """``POST livechat/room.forward`` to an agent or a department (needs transfer-livechat-guest)."""
    body: dict[str, Any] = {"roomId": room_id}
    if user_id:
        body["userId"] = user_id
    if department_id:
        body["departmentId"] = department_id
    rc.request("POST", "/api/v1/livechat/room.forward", json=body)


def open_rooms(rc: RocketChat) -> dict[str, str]:
    """Every open livechat room with an agent -> that agent's id (``livechat/rooms?open=true``, paged).

    One call per 100 open rooms however many agents there are, so it fits Rocket.Chat's per-route rate limit
    (needs view-livechat-rooms).
    """
    served: dict[str, str] = {}
    for room in _pages(rc, "/api/v1/livechat/rooms", "rooms", {"open": "true"}):
        if not isinstance(room, dict) or not isinstance(room.get("_id"), str) or room.get("open") is False:
            continue
        agent = room.get("servedBy")
        if isinstance(agent, dict) and isinstance(agent.get("_id"), str):
            served[room["_id"]] = agent["_id"]
    return served


def assign_extension(rc: RocketChat, username: str, extension: str) -> None:
    """``POST omnichannel/agent/extension`` (7.x; needs manage-agent-extension-association)."""
    rc.request("POST", "/api/v1/omnichannel/agent/extension", json={"username": username, "extension": extension})


def remove_extension(rc: RocketChat, username: str) -> None:
    rc.request("DELETE", "/api/v1/omnichannel/agent/extension/{username}", path={"username": username})


def queued_inquiries_of_rooms(
    rc: RocketChat, rooms: set[str], department: str | None = None, for_user: bool = False
) -> dict[str, dict[str, Any]]:
    """The queued inquiries of ``rooms`` (room id -> inquiry), read page by page until every room was seen or the
    list ended: ``inquiries.list`` (view-livechat-manager), or with ``for_user`` ``inquiries.queuedForUser``
    (view-l-room; the account's departments). One call for up to a page of chats, however many wait."""
    route = "/api/v1/livechat/inquiries.queuedForUser" if for_user else "/api/v1/livechat/inquiries.list"
    params = {"department": department} if department else {}
    found: dict[str, dict[str, Any]] = {}
    for inquiry in _pages(rc, route, "inquiries", params):
        if isinstance(inquiry, dict) and inquiry.get("rid") in rooms and isinstance(inquiry.get("_id"), str):
            found[inquiry["rid"]] = inquiry
            if len(found) == len(rooms):
                break
    return found


def queued_inquiries(rc: RocketChat) -> list[dict[str, Any]]:
    """``GET livechat/inquiries.list`` (every queued inquiry; needs view-livechat-manager)."""
    return [i for i in _pages(rc, "/api/v1/livechat/inquiries.list", "inquiries", {}) if isinstance(i, dict)]


def queued_inquiries_for_user(rc: RocketChat) -> list[dict[str, Any]]:
    """``GET livechat/inquiries.queuedForUser``: queued inquiries of the account's departments (view-l-room)."""
    return [i for i in _pages(rc, "/api/v1/livechat/inquiries.queuedForUser", "inquiries", {}) if isinstance(i, dict)]
