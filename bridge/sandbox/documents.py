"""Builders for Rocket.Chat documents as the REST API returns them.

Field names are Rocket.Chat's own (core-typings IUser/ILivechatAgent, ILivechatDepartment,
ILivechatDepartmentAgents, IOmnichannelRoom, ILivechatInquiryRecord). Dates are ISO strings.
"""

from datetime import UTC, datetime
from typing import Any

Doc = dict[str, Any]


def iso(moment: datetime) -> str:
    """A date as JSON.stringify writes it: UTC, milliseconds, trailing Z."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def connection_of(status: str) -> str:
    """statusConnection follows the presence: 'busy' is still a connected ('online') session."""
    return status if status in ("away", "offline") else "online"


def user_doc(
    user_id: str, username: str, name: str | None, roles: list[str], status: str, email: str | None, now: str
) -> Doc:
    return {
        "_id": user_id,
        "createdAt": now,
        "type": "user",
        "username": username,
        "name": name or username,
        "active": True,
        "roles": roles,
        "status": status,
        "statusConnection": connection_of(status),
        "utcOffset": 0,
        "emails": [{"address": email or f"{username}@example.test", "verified": True}],
        "_updatedAt": now,
    }


def department_doc(department_id: str, name: str, enabled: bool, now: str) -> Doc:
    return {
        "_id": department_id,
        "name": name,
        "enabled": enabled,
        "showOnRegistration": True,
        "showOnOfflineForm": True,
        "email": "",
        "description": "",
        "type": "d",
        "numAgents": 0,
        "_updatedAt": now,
    }


def link_doc(link_id: str, department: Doc, user: Doc, order: int) -> Doc:
    return {
        "_id": link_id,
        "agentId": user["_id"],
        "departmentId": department["_id"],
        "departmentEnabled": department["enabled"],
        "username": user["username"],
        "count": 0,
        "order": order,
    }


def visitor_doc(visitor_id: str, number: int, token: str, now: str, overrides: Doc) -> Doc:
    return {
        "_id": visitor_id,
        "username": f"guest-{number}",
        "name": f"Guest {number}",
        "token": token,
        "ts": now,
        "status": "online",
        **overrides,
    }


def room_doc(room_id: str, guest: Doc, now: str) -> Doc:
    return {
        "_id": room_id,
        "t": "l",
        "fname": guest["name"],
        "msgs": 1,
        "usersCount": 1,
        "open": True,
        "v": {
            "_id": guest["_id"],
            "username": guest["username"],
            "token": guest["token"],
            "status": "online",
        },
        "source": {"type": "widget"},
        "ts": now,
        "lm": now,
        "queuedAt": now,
        "_updatedAt": now,
    }


def inquiry_doc(inquiry_id: str, room: Doc, message: str, now: str) -> Doc:
    return {
        "_id": inquiry_id,
        "rid": room["_id"],
        "name": room["fname"],
        "message": message,
        "status": "queued",
        "t": "l",
        "v": {**room["v"], "name": room["fname"]},
        "ts": now,
        "queuedAt": now,
        "priorityWeight": 99999,
        "estimatedWaitingTimeQueue": 0,
        "_updatedAt": now,
    }


def visitor_message_doc(message_id: str, room: Doc, guest: Doc, text: str, now: str) -> Doc:
    # A visitor's message carries the visitor token; that is how Rocket.Chat tells it from an agent's.
    return {
        "_id": message_id,
        "rid": room["_id"],
        "msg": text,
        "token": guest["token"],
        "alias": guest["name"],
        "u": {"_id": guest["_id"], "username": guest["username"], "name": guest["name"]},
        "ts": now,
        "_updatedAt": now,
    }
