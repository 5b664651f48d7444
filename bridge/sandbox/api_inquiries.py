"""The livechat queue: `livechat/inquiries.getOne|take|queuedForUser|list` (docs/rocketchat.md §3.3)."""

import copy
from typing import Any

from bridge.sandbox import errors, params
from bridge.sandbox.documents import Doc
from bridge.sandbox.endpoint import Call, Endpoint
from bridge.sandbox.livechat import RoutingError, take_inquiry

_LIST_FIELDS = ("_id", "rid", "name", "ts", "status", "department")


def _get_one_query(call: Call) -> str | None:
    return None if call.arg("roomId") else "must have required property 'roomId'"


def get_one(call: Call) -> dict[str, Any]:
    state = call.state
    with state.lock:
        inquiry = next((inq for inq in state.inquiries.values() if inq["rid"] == call.arg("roomId")), None)
        return {"inquiry": copy.deepcopy(inquiry)}


def _take_body(call: Call) -> str | None:
    # Only the 8.x schema has `options`; older ones are additionalProperties:false on the two ids.
    optional: dict[str, type] = {"userId": str} | ({"options": dict} if call.major >= 8 else {})
    problem = params.check_body(call.body, {"inquiryId": str}, optional)
    if problem is None and "options" in call.body:
        problem = params.check_body(call.body["options"], {"clientAction": bool}, {"forwardingToDepartment": dict})
    return problem


def take(call: Call) -> dict[str, Any]:
    state = call.state
    user_id = call.body.get("userId")
    with state.lock:
        if user_id and user_id not in state.users:
            raise errors.failure("The user is invalid")
    try:
        room = take_inquiry(state, call.body["inquiryId"], user_id or call.user_id)
    except RoutingError as refused:
        raise errors.meteor_error(refused.code, refused.reason, {"method": "livechat:takeInquiry"}) from None
    # Newer takeInquiry returns nothing, so 8.x answers {success:true}. 7.x still answered with
    # the DDP method's result, which is RoutingManager.takeInquiry's return value: the room.
    return {} if call.major >= 8 else {"inquiry": room}


def queued_for_user(call: Call) -> dict[str, Any]:
    """Queued inquiries in the caller's departments (all of them for a caller in no department)."""
    state = call.state
    offset, count = params.pagination(call)
    sort = params.sort_spec(call, default={"ts": 1})
    department, status = call.arg("department"), call.arg("status") or "queued"
    with state.lock:
        mine = {link["departmentId"] for link in state.links(agent_id=call.user_id)}
        found = [
            inquiry
            for inquiry in state.inquiries.values()
            if inquiry["status"] == status
            and (not mine or inquiry.get("department") in mine)
            and department in (None, inquiry.get("department"))
            and inquiry.get("defaultAgent", {}).get("agentId") in (None, call.user_id)
        ]
        found = copy.deepcopy(found)
    listed = params.page(params.sort_docs(found, sort), offset, count)
    return {"inquiries": listed, "count": len(listed), "offset": offset, "total": len(found)}


def inquiries_list(call: Call) -> dict[str, Any]:
    state = call.state
    offset, count = params.pagination(call)
    sort = params.sort_spec(call, default={"ts": 1})
    department = call.arg("department")
    with state.lock:
        found = [
            _projected(inquiry)
            for inquiry in state.inquiries.values()
            if inquiry["status"] == "queued" and department in (None, inquiry.get("department"))
        ]
    listed = params.page(params.sort_docs(found, sort), offset, count)
    return {"inquiries": listed, "count": len(listed), "offset": offset, "total": len(found)}


def _projected(inquiry: Doc) -> Doc:
    return {key: copy.deepcopy(inquiry[key]) for key in _LIST_FIELDS if key in inquiry}


_AGENTS = ("view-l-room",)

ENDPOINTS = [
    Endpoint("GET", "/api/v1/livechat/inquiries.getOne", get_one, permissions=_AGENTS, validate=_get_one_query),
    Endpoint("POST", "/api/v1/livechat/inquiries.take", take, permissions=_AGENTS, validate=_take_body),
    Endpoint("GET", "/api/v1/livechat/inquiries.queuedForUser", queued_for_user, permissions=_AGENTS),
    Endpoint("GET", "/api/v1/livechat/inquiries.list", inquiries_list, permissions=("view-livechat-manager",)),
]
