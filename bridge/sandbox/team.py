"""The sample contact-centre team and the bridge's service account, seeded into a sandbox state.

`omnibridge sandbox`, `omnibridge up` without ROCKETCHAT_URL and the test suite all seed this one team.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.sandbox.state import SandboxState

SALES, SUPPORT = "dept-sales", "dept-support"
DEPARTMENTS = {SALES: "Sales", SUPPORT: "Support"}

# The least-privilege service account the README documents: `bot` (holds api-bypass-rate-limit, so the sandbox's
# rate limiter never slows the bridge down), `livechat-manager` (take, forward, rooms, inquiries, departments) and
# a custom role holding the admin-only permission `omnichannel/agents/available` needs on 7.x.
VOIP_ROLE = "omnibridge-voip"
SERVICE_ROLES = ("user", "bot", "livechat-manager", VOIP_ROLE)

# Different capacities (`maxNumberSimultaneousChat`, stored as Rocket.Chat may: a number, a string, or not at
# all, so DEFAULT_MAX_CHATS holds) and presences: cy is away, dee offline, eve not available for livechat.
SAMPLE_TEAM: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ana", {"max_chats": 2, "departments": [SALES]}),
    ("bo", {"max_chats": "3", "departments": [SALES, SUPPORT]}),
    ("cy", {"status": "away", "max_chats": 2, "departments": [SUPPORT]}),
    ("dee", {"status": "offline", "max_chats": 2, "departments": [SUPPORT]}),
    ("eve", {"statusLivechat": "not-available", "max_chats": 2, "departments": [SALES]}),
    ("fay", {"departments": [SUPPORT]}),
)


@dataclass(frozen=True)
class Account:
    user_id: str
    token: str


def add_service_account(state: SandboxState, roles: tuple[str, ...] = SERVICE_ROLES, **kwargs: Any) -> Account:
    """The bridge's account, `omnibridge`, with a personal access token (or the `pat=` given)."""
    state.grant(VOIP_ROLE, "manage-agent-extension-association")
    user_id, token = state.add_account("omnibridge", roles, **kwargs)
    return Account(user_id, token)


def seed_team(state: SandboxState, agents: int = len(SAMPLE_TEAM)) -> dict[str, str]:
    """Sales and Support, and `agents` agents: the first of SAMPLE_TEAM, then available ones (`agent-7`, ...)
    alternating between the departments with capacities 2 to 4. Returns username -> user id."""
    if agents < 1:
        raise ValueError("the team needs at least one agent")
    for department_id, name in DEPARTMENTS.items():
        state.add_department(name, department_id=department_id)
    team = list(SAMPLE_TEAM[:agents])
    for number in range(len(SAMPLE_TEAM) + 1, agents + 1):
        team.append((f"agent-{number}", {"max_chats": 2 + number % 3, "departments": [(SALES, SUPPORT)[number % 2]]}))
    return {name: state.add_agent(name, **options)["_id"] for name, options in team}


def describe_team(state: SandboxState) -> list[str]:
    """One line per agent: presence, capacity and departments, as `omnibridge status` shows them."""
    lines = []
    with state.lock:
        for user in state.users.values():
            if "livechat-agent" not in user["roles"]:
                continue
            capacity = user.get("livechat", {}).get("maxNumberSimultaneousChat", "unset")
            departments = ", ".join(
                state.departments[link["departmentId"]]["name"] for link in state.links(agent_id=user["_id"])
            )
            presence = f"{user['statusLivechat']} ({user['status']})"
            lines.append(f"{user['username']:<10} {presence:<26} max chats {capacity!s:<8} {departments}")
    return lines
