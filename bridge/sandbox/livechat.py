"""Rocket.Chat's routing rules for taking inquiries and forwarding rooms, over the sandbox state.

Sources: lib/takeInquiry.ts, RoutingManager.takeInquiry/transferRoom/unassignAgent, lib/Helper.ts
forwardRoomToAgent/forwardRoomToDepartment, lib/transfer.ts (docs/rocketchat.md §3.1, 3.3). The sandbox routes
like Manual_Selection: nothing is auto-assigned, so a department forward puts the room back in the
queue of the new department.
"""

import copy

from bridge.sandbox.documents import Doc
from bridge.sandbox.state import FORWARDED, TAKEN, Event, SandboxState


class RoutingError(Exception):
    """Rocket.Chat refused: `code` is its error id, `reason` the Meteor.Error reason (if any)."""

    def __init__(self, code: str, reason: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.reason = reason or code


def is_online_agent(user: Doc, *, accept_idle: bool | None) -> bool:
    """`queryStatusAgentOnline`: an active, available livechat agent that is connected.

    With `accept_idle is False` (Livechat_enabled_when_agent_idle off) an idle ('away') agent
    does not count; forwarding passes no setting at all, so there idle agents do count.
    """
    roles = user.get("roles", [])
    if "livechat-agent" not in roles or user.get("statusLivechat") != "available" or not user.get("active"):
        return False
    if "bot" not in roles and user.get("status") in (None, "offline"):
        return False
    return not (accept_idle is False and user.get("statusConnection") == "away")


def take_inquiry(state: SandboxState, inquiry_id: str, agent_id: str) -> Doc:
    """`takeInquiry(userId, inquiryId)`; returns the room as RoutingManager.takeInquiry does."""
    events: list[Event] = []
    with state.lock:
        inquiry = state.inquiries.get(inquiry_id)
        if inquiry is None:
            raise RoutingError("error-not-found", "Inquiry not found")
        if inquiry["status"] == "taken":
            raise RoutingError("error-inquiry-taken", "Inquiry already taken")
        agent = state.users.get(agent_id)
        if agent is None or not is_online_agent(agent, accept_idle=state.accept_when_idle):
            raise RoutingError(
                "error-agent-status-service-offline",
                "Agent status is offline or Omnichannel service is not active",
            )
        room = state.rooms[inquiry["rid"]]
        # RoutingManager.takeInquiry leaves closed rooms and rooms the agent already serves alone.
        if room.get("open") and room.get("servedBy", {}).get("_id") != agent_id:
            state.serve(room["_id"], agent_id)
            events.append((TAKEN, copy.deepcopy(room)))
        result = copy.deepcopy(room)
    state.emit(events)
    return result


def forward_room(state: SandboxState, rid: str, *, user_id: str | None, department_id: str | None) -> None:
    """`POST livechat/room.forward`: the checks of room.ts, transfer() and transferRoom()."""
    with state.lock:
        room = state.rooms.get(rid)
        if room is None or room.get("t") != "l":
            raise RoutingError("error-invalid-room")
        if not room.get("open"):
            raise RoutingError("This_conversation_is_already_closed")
        if department_id:
            if department_id not in state.departments:
                raise RoutingError("error-invalid-department")
            # transferRoom tries the department first, even when a userId is given too.
            events = _to_department(state, room, department_id, user_id)
        elif user_id:
            events = _to_agent(state, room, user_id)
        else:
            raise RoutingError("error-forwarding-chat")  # transferRoom found no target
    state.emit(events)


def _to_agent(state: SandboxState, room: Doc, agent_id: str) -> list[Event]:
    agent = state.users.get(agent_id)
    if agent is None or not is_online_agent(agent, accept_idle=None):
        raise RoutingError("error-user-is-offline")  # also for an unknown id (findOneOnlineAgentById)
    if not any(inquiry["rid"] == room["_id"] for inquiry in state.inquiries.values()):
        raise RoutingError("error-invalid-inquiry")
    old_served_by = room.get("servedBy")
    if old_served_by and old_served_by["_id"] == agent_id:
        raise RoutingError("error-selected-agent-room-agent-are-same")
    state.serve(room["_id"], agent_id)
    # Forwarding goes through RoutingManager.takeInquiry, whose afterTakeInquiry hook fires too.
    forwarded = copy.deepcopy({**room, **({"oldServedBy": old_served_by} if old_served_by else {})})
    return [(TAKEN, copy.deepcopy(room)), (FORWARDED, forwarded)]


def _to_department(state: SandboxState, room: Doc, department_id: str, agent_id: str | None) -> list[Event]:
    inquiry = next((inq for inq in state.inquiries.values() if inq["rid"] == room["_id"]), None)
    if inquiry is None:
        raise RoutingError("error-transferring-inquiry")
    old_department_id = room.get("departmentId")
    if old_department_id == department_id:
        raise RoutingError("error-forwarding-chat-same-department")
    if agent_id:
        agent = state.users.get(agent_id)
        if agent is None or not is_online_agent(agent, accept_idle=None):
            raise RoutingError("error-user-is-offline")
        if not state.links(department_id=department_id, agent_id=agent_id):
            raise RoutingError("error-user-not-belong-to-department")
    # Without auto-assignment Rocket.Chat calls RoutingManager.unassignAgent(inquiry, dept, true).
    now = state.now()
    room.update(departmentId=department_id, _updatedAt=now)
    room.pop("servedBy", None)
    inquiry.update(department=department_id, status="queued", queuedAt=now, _updatedAt=now)
    inquiry.pop("takenAt", None)
    forwarded = copy.deepcopy({**room, **({"oldDepartmentId": old_department_id} if old_department_id else {})})
    return [(FORWARDED, forwarded)]
