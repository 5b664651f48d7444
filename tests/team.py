"""A small contact-centre team in the Rocket.Chat double, and the bridge's service account."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.sandbox.state import SandboxState

SALES, SUPPORT = "dept-sales", "dept-support"

# The least-privilege service account the README documents: `bot` (no rate limit), `livechat-manager`
# (take, forward, rooms, inquiries, departments) and a custom role holding the admin-only VoIP permission.
SERVICE_ROLES = ("user", "bot", "livechat-manager", "omnibridge-voip")


@dataclass(frozen=True)
class Account:
    user_id: str
    token: str


def add_service_account(state: SandboxState, roles: tuple[str, ...] = SERVICE_ROLES, **kwargs: object) -> Account:
    state.grant("omnibridge-voip", "manage-agent-extension-association")
    user_id, token = state.add_account("omnibridge", roles, **kwargs)
    return Account(user_id, token)


def seed_team(state: SandboxState) -> dict[str, str]:
    """Agents over two departments with different capacities and presence. Returns username -> id."""
    state.add_department("Sales", department_id=SALES)
    state.add_department("Support", department_id=SUPPORT)
    team = {
        "ana": dict(max_chats=2, departments=[SALES]),
        "bo": dict(max_chats="3", departments=[SALES, SUPPORT]),
        "cy": dict(status="away", max_chats=2, departments=[SUPPORT]),
        "dee": dict(status="offline", max_chats=2, departments=[SUPPORT]),
        "eve": dict(statusLivechat="not-available", max_chats=2, departments=[SALES]),
        "fay": dict(departments=[SUPPORT]),
    }
    return {name: state.add_agent(name, **options)["_id"] for name, options in team.items()}
