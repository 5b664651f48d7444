"""Rocket.Chat's default permission → roles table, for the permissions the sandbox checks.

Copied from Rocket.Chat's `upsertPermissions` list (apps/meteor/app/authorization/server/functions/
upsertPermissions.ts). Only the permissions used by the sandbox's endpoints are listed.
"""

from collections.abc import Iterable, Mapping

_MANAGERS = ("admin", "livechat-manager", "livechat-monitor")

DEFAULT_PERMISSIONS: Mapping[str, frozenset[str]] = {
    "view-l-room": frozenset((*_MANAGERS, "livechat-agent")),
    "view-livechat-manager": frozenset(_MANAGERS),
    "view-livechat-rooms": frozenset(_MANAGERS),
    "view-livechat-departments": frozenset(_MANAGERS),
    "transfer-livechat-guest": frozenset(_MANAGERS),
    "manage-livechat-agents": frozenset(_MANAGERS),
    # Rocket.Chat grants this one to plain agents too, so an agent token may list
    # `livechat/users/agent` (which accepts transfer-livechat-guest OR edit-omnichannel-contact).
    "edit-omnichannel-contact": frozenset(("admin", "livechat-manager", "livechat-agent")),
    "view-agent-extension-association": frozenset(("admin", "livechat-manager", "livechat-agent")),
    "manage-agent-extension-association": frozenset(("admin",)),
    "api-bypass-rate-limit": frozenset(("admin", "bot", "app")),
}


def default_permissions() -> dict[str, set[str]]:
    """A mutable copy of the defaults, so one sandbox can grant or revoke without touching another."""
    return {permission: set(roles) for permission, roles in DEFAULT_PERMISSIONS.items()}


def roles_allow(table: Mapping[str, Iterable[str]], roles: Iterable[str], permission: str) -> bool:
    return not set(roles).isdisjoint(table.get(permission, ()))
