"""Agents and departments: `livechat/users/agent`, `livechat/agents/:id/departments`,
`livechat/department`, `livechat/department/:_id/agents`, `livechat/agent.status` (docs/rocketchat.md §3.4).
"""

import copy
from typing import Any

from bridge.sandbox import errors, params
from bridge.sandbox.documents import Doc
from bridge.sandbox.endpoint import Call, Endpoint

_AGENT_FIELDS = ("_id", "username", "name", "status", "statusLivechat", "emails", "livechat")


def users_agent(call: Call) -> dict[str, Any]:
    """`findAgents`: an aggregate over agents with their department ids; count IS enforced here."""
    state = call.state
    assert call.user is not None
    if not any(state.has_permission(call.user, p) for p in ("transfer-livechat-guest", "edit-omnichannel-contact")):
        raise errors.forbidden(call.major)
    offset, count = params.pagination(call)
    sort = params.sort_spec(call, default={"name": 1})
    text = call.arg("text")
    only_available = params.flag(call, "onlyAvailable", False)
    show_idle = params.flag(call, "showIdleAgents", True)
    exclude_id = call.arg("excludeId")
    with state.lock:
        agents = [user for user in state.users.values() if "livechat-agent" in user.get("roles", ())]
        if text:
            agents = [u for u in agents if params.contains(text, u["username"], u.get("name"), *_addresses(u))]
        if only_available:
            agents = [u for u in agents if u.get("statusLivechat") == "available"]
        if exclude_id:
            agents = [u for u in agents if u["_id"] != exclude_id]
        if not show_idle:
            agents = [u for u in agents if "bot" in u["roles"] or u.get("status") not in (None, "offline")]
        # $group with $first gives null for a missing field, so every listed key is present.
        users = [
            {
                **{key: copy.deepcopy(u.get(key)) for key in _AGENT_FIELDS},
                "departments": _department_ids(call, u),
            }
            for u in agents
        ]
    users = params.page(params.sort_docs(users, sort), offset, count)
    return {"users": users, "count": len(users), "offset": offset, "total": len(agents)}


def _addresses(user: Doc) -> list[str]:
    return [email.get("address") for email in user.get("emails") or []]


def _department_ids(call: Call, user: Doc) -> list[str]:
    return [link["departmentId"] for link in call.state.links(agent_id=user["_id"])]


def agent_departments(call: Call) -> dict[str, Any]:
    state = call.state
    enabled_only = params.flag(call, "enabledDepartmentsOnly", False)
    with state.lock:
        links = state.links(agent_id=call.params["agentId"])
        if enabled_only:
            links = [link for link in links if link["departmentEnabled"]]
        departments = [
            {**copy.deepcopy(link), "departmentName": state.departments[link["departmentId"]]["name"]} for link in links
        ]
    return {"departments": departments}


def departments(call: Call) -> dict[str, Any]:
    state = call.state
    offset, count = params.pagination(call)
    sort = params.sort_spec(call, default={"name": 1})
    text, enabled = call.arg("text"), call.arg("enabled")
    with state.lock:
        found = copy.deepcopy(list(state.departments.values()))
    if text:
        found = [department for department in found if params.contains(text, department["name"])]
    if enabled is not None:
        found = [department for department in found if department["enabled"] == (enabled == "true")]
    listed = params.page(params.sort_docs(found, sort), offset, count)
    return {"departments": listed, "count": len(listed), "offset": offset, "total": len(found)}


def department_agents(call: Call) -> dict[str, Any]:
    state = call.state
    offset, count = params.pagination(call)
    sort = params.sort_spec(call, default={"username": 1})
    with state.lock:
        links = copy.deepcopy(state.links(department_id=call.params["_id"]))
    listed = params.page(params.sort_docs(links, sort), offset, count)
    return {"agents": listed, "count": len(listed), "offset": offset, "total": len(links)}


def _agent_status_body(call: Call) -> str | None:
    problem = params.check_body(call.body, {}, {"status": str, "agentId": str})
    if problem is None and call.body.get("status", "available") not in ("available", "not-available"):
        return "must be equal to one of the allowed values"
    return problem


def agent_status(call: Call) -> dict[str, Any]:
    """agent.ts: with no status it toggles; changing someone else needs manage-livechat-agents.

    Business hours are not modelled: they are always open, so the change always goes through.
    """
    state = call.state
    assert call.user is not None
    agent_id = call.body.get("agentId") or call.user_id
    with state.lock:
        agent = state.users.get(agent_id)
        if agent is None or "livechat-agent" not in agent.get("roles", ()):
            raise errors.not_found("Agent not found")
        if not agent.get("active"):
            raise errors.failure("error-user-deactivated")
        current = agent.get("statusLivechat")
    wanted = call.body.get("status") or ("not-available" if current == "available" else "available")
    if wanted == current:
        return {"status": current}
    if agent_id != call.user_id and not state.has_permission(call.user, "manage-livechat-agents"):
        raise errors.forbidden(call.major)
    state.set_presence(agent_id, statusLivechat=wanted)
    return {"status": wanted}


_DEPARTMENT_VIEWERS = ("view-livechat-departments", "view-l-room")

ENDPOINTS = [
    Endpoint("GET", "/api/v1/livechat/users/agent", users_agent),
    Endpoint(
        "GET",
        "/api/v1/livechat/agents/{agentId}/departments",
        agent_departments,
        permissions=("view-l-room",),
    ),
    Endpoint(
        "GET",
        "/api/v1/livechat/department",
        departments,
        permissions=_DEPARTMENT_VIEWERS,
        any_permission=True,
    ),
    Endpoint(
        "GET",
        "/api/v1/livechat/department/{_id}/agents",
        department_agents,
        permissions=_DEPARTMENT_VIEWERS,
        any_permission=True,
    ),
    Endpoint(
        "POST",
        "/api/v1/livechat/agent.status",
        agent_status,
        permissions=("view-l-room",),
        validate=_agent_status_body,
    ),
]
