"""Livechat rooms: `livechat/room.forward` (docs/rocketchat.md §3.1) and `livechat/rooms` (docs/rocketchat.md §3.5)."""

import copy
from typing import Any

from bridge.sandbox import errors, params
from bridge.sandbox.endpoint import Call, Endpoint
from bridge.sandbox.livechat import RoutingError, forward_room


def _forward_body(call: Call) -> str | None:
    optional = {"userId": str, "departmentId": str, "comment": str, "clientAction": bool}
    return params.check_body(call.body, {"roomId": str}, optional)


def forward(call: Call) -> dict[str, Any]:
    body = call.body
    try:
        forward_room(call.state, body["roomId"], user_id=body.get("userId"), department_id=body.get("departmentId"))
    except RoutingError as refused:
        # room.ts and Helper.ts throw plain Errors here: the id is the whole message, no errorType.
        raise errors.failure(refused.code) from None
    return {}


def rooms(call: Call) -> dict[str, Any]:
    state = call.state
    assert call.user is not None
    agents = call.args("agents")
    as_manager = state.has_permission(call.user, "view-livechat-rooms")
    own_rooms_only = state.has_permission(call.user, "view-l-room") and agents == [call.user_id]
    if not as_manager and not own_rooms_only:
        raise errors.forbidden(call.major)
    offset, count = params.pagination(call)
    sort = params.sort_spec(call, default={"ts": -1})
    departments = call.args("departmentId")
    is_open, queued, name = call.arg("open"), call.arg("queued"), call.arg("roomName")
    with state.lock:
        found = copy.deepcopy([room for room in state.rooms.values() if room.get("t") == "l"])
    if agents:
        found = [room for room in found if room.get("servedBy", {}).get("_id") in agents]
    if departments:
        found = [room for room in found if room.get("departmentId") in departments]
    if is_open is not None:
        found = [room for room in found if bool(room.get("open")) == (is_open == "true")]
    if queued == "true":
        found = [room for room in found if room.get("open") and "servedBy" not in room]
    if name:
        found = [room for room in found if params.contains(name, room.get("fname"))]
    listed = params.page(params.sort_docs(found, sort), offset, count)
    return {"rooms": listed, "count": len(listed), "offset": offset, "total": len(found)}


ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/v1/livechat/room.forward",
        forward,
        permissions=("view-l-room", "transfer-livechat-guest"),
        validate=_forward_body,
    ),
    # No permissionsRequired: the handler itself decides and answers with API.v1.forbidden().
    Endpoint("GET", "/api/v1/livechat/rooms", rooms),
]
