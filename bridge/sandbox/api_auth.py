"""`GET /api/info`, `POST /api/v1/login`, `GET /api/v1/me` (docs/rocketchat.md §5.1)."""

import copy
from typing import Any

from bridge.sandbox import errors
from bridge.sandbox.documents import Doc
from bridge.sandbox.endpoint import Call, Endpoint


def info(call: Call) -> dict[str, Any]:
    return {"version": call.state.version}


def login(call: Call) -> dict[str, Any]:
    body, state = call.body, call.state
    password = body.get("password")
    if password is None and isinstance(body.get("resume"), str):
        user = _resumed(call, body["resume"])
    else:
        user = _password_login(call, password)
    token = state.credentials.add_token(user["_id"])
    return {"status": "success", "data": {"userId": user["_id"], "authToken": token, "me": user_info(user)}}


def _password_login(call: Call, password: Any) -> Doc:
    login_name = next((call.body[key] for key in ("user", "username", "email") if call.body.get(key)), None)
    if not isinstance(login_name, str) or not isinstance(password, str | dict):
        # Meteor's login method got no handler for these arguments.
        raise errors.login_failed(call.major, 400, "Unrecognized options for login request")
    user = _user_by_login(call, login_name)
    if user is None:
        raise errors.login_failed(call.major, 403, "User not found")
    if not call.state.credentials.password_matches(user["_id"], password):
        raise errors.login_failed(call.major, 403, "Incorrect password")
    return user


def _user_by_login(call: Call, login_name: str) -> Doc | None:
    """By username, or by email address when the name contains '@' (Rocket.Chat's rule)."""
    with call.state.lock:
        for user in call.state.users.values():
            addresses = [email.get("address") for email in user.get("emails") or []]
            if login_name in (addresses if "@" in login_name else [user["username"]]):
                return copy.deepcopy(user)
    return None


def _resumed(call: Call, token: str) -> Doc:
    owner = call.state.credentials.owner_of(token)
    user = call.state.authenticate(owner, token)
    if user is None:
        raise errors.login_failed(call.major, 403, "You've been logged out by the server. Please log in again.")
    return user


def me(call: Call) -> dict[str, Any]:
    assert call.user is not None
    return user_info(call.user)


def user_info(user: Doc) -> Doc:
    """`getUserInfo`: the user document plus the primary email, preferences and avatar URL."""
    info = copy.deepcopy(user)
    emails = info.get("emails") or []
    if emails:
        info["email"] = emails[0]["address"]
    info.setdefault("settings", {"preferences": {}})
    info["avatarUrl"] = f"/avatar/{info['username']}"
    return info


ENDPOINTS = [
    Endpoint("GET", "/api/info", info, auth=False),
    Endpoint("POST", "/api/v1/login", login, auth=False),
    Endpoint("GET", "/api/v1/me", me),
]
