"""The VoIP extension routes of 4.5.0 to 7.x (docs/rocketchat.md §2 and 3.6); 8.0.0 removed them all.

Source: apps/meteor/app/api/server/v1/voip/omnichannel.ts.
"""

import copy
from typing import Any

from bridge.sandbox import errors, params
from bridge.sandbox.documents import Doc
from bridge.sandbox.endpoint import Call, Endpoint

LAST_VOIP_MAJOR = 7
_MANAGE = ("manage-agent-extension-association",)


def agents_available(call: Call) -> dict[str, Any]:
    """`Users.getAvailableAgentsIncludingExt`: agents WITHOUT an extension, whatever their presence.

    No projection (whole user documents) and `count` is handed to Mongo as an option it ignores,
    so every match from `offset` on comes back while `count` is echoed.
    """
    state = call.state
    offset, count = params.pagination(call)
    sort = params.sort_spec(call)
    text = call.arg("text") or ""
    include_extension = call.arg("includeExtension") or ""
    with state.lock:
        agents = [
            user
            for user in state.users.values()
            if "livechat-agent" in user.get("roles", ())
            and (not text.strip() or params.contains(text, user["username"], user.get("name")))
            and ("extension" not in user or (include_extension and user["extension"] == include_extension))
        ]
        agents = copy.deepcopy(agents)
    agents = params.sort_docs(agents, sort)
    return {"agents": agents[offset:], "offset": offset, "count": count, "total": len(agents)}


def _extension_body(call: Call) -> str | None:
    # oneOf [{userId, extension}, {username, extension}], each additionalProperties:false.
    fits = [params.check_body(call.body, {key: str, "extension": str}) is None for key in ("userId", "username")]
    return None if fits.count(True) == 1 else "must match exactly one schema in oneOf"


def _agent(call: Call, *, user_id: str | None = None, username: str | None = None) -> Doc | None:
    """`findOneAgentById` / `findOneByAgentUsername`: only users with the livechat-agent role."""
    with call.state.lock:
        for user in call.state.users.values():
            if "livechat-agent" in user.get("roles", ()) and (user["_id"] == user_id or user["username"] == username):
                return copy.deepcopy(user)
    return None


def set_extension(call: Call) -> dict[str, Any]:
    extension = call.body["extension"]
    user = _agent(call, user_id=call.body.get("userId"), username=call.body.get("username"))
    if user is None:
        raise errors.not_found("User not found or does not have livechat-agent role")
    state = call.state
    with state.lock:
        # Rocket.Chat's unique index on `extension` makes Users.setExtension throw.
        if any(u.get("extension") == extension and u["_id"] != user["_id"] for u in state.users.values()):
            raise errors.failure(f"extension already in use {extension}")
        state.users[user["_id"]]["extension"] = extension
    return {}


def get_extension(call: Call) -> dict[str, Any]:
    user = _agent(call, username=call.params["username"])
    if user is None:
        raise errors.not_found("User not found")
    if "extension" not in user:
        raise errors.not_found("Extension not found")
    return {"extension": {"_id": user["_id"], "username": user["username"], "extension": user["extension"]}}


def delete_extension(call: Call) -> dict[str, Any]:
    user = _agent(call, username=call.params["username"])
    if user is None:
        raise errors.not_found()
    with call.state.lock:
        call.state.users[user["_id"]].pop("extension", None)  # succeeds even when none was set
    return {}


_EXTENSION_PATH = "/api/v1/omnichannel/agent/extension"

ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/omnichannel/agents/available",
        agents_available,
        permissions=_MANAGE,
        last_major=LAST_VOIP_MAJOR,
    ),
    Endpoint(
        "POST",
        _EXTENSION_PATH,
        set_extension,
        permissions=_MANAGE,
        validate=_extension_body,
        last_major=LAST_VOIP_MAJOR,
    ),
    Endpoint(
        "GET",
        _EXTENSION_PATH + "/{username}",
        get_extension,
        permissions=("view-agent-extension-association",),
        last_major=LAST_VOIP_MAJOR,
    ),
    Endpoint(
        "DELETE",
        _EXTENSION_PATH + "/{username}",
        delete_extension,
        permissions=_MANAGE,
        last_major=LAST_VOIP_MAJOR,
    ),
]
