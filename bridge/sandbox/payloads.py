"""Rocket.Chat livechat webhook bodies, built the way Rocket.Chat builds them.

Mirrors `sendToCRM` (apps/meteor/app/livechat/server/hooks/sendToCRM.ts), `getLivechatRoomGuestInfo`
(lib/guests.ts), the offline-message hook and the admin `livechat/webhook.test` sample. Documents go
in as plain dicts shaped like Rocket.Chat's MongoDB documents; the JSON-ready body comes out.

A key missing from a document is JavaScript's `undefined` and is left out, as `JSON.stringify` does;
`None` is `null` and is kept. Dates come out as `Date.prototype.toJSON` strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

Doc = Mapping[str, Any]
Payload = dict[str, Any]

ROOM_EVENT_TYPES: Final = (
    "LivechatSessionStart",
    "LivechatSessionQueued",
    "LivechatSessionTaken",
    "LivechatSessionForwarded",
    "LivechatSession",
    "LivechatEdit",
)

# getAdditionalFieldsByType; Message, LeadCapture and LivechatEdit get none.
_EXTRA_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "LivechatSessionStart": ("departmentId",),
    "LivechatSessionQueued": ("departmentId",),
    "LivechatSessionTaken": ("departmentId", "servedBy"),
    "LivechatSessionForwarded": ("departmentId", "servedBy", "oldDepartmentId", "oldServedBy"),
    "LivechatSession": ("departmentId", "servedBy", "closedAt", "closedBy", "closer"),
}

_CLOSING: Final = "livechat-close"
_NAVIGATION: Final = "livechat_navigation_history"
_UNDEFINED: Final[Any] = object()


def js_date(value: datetime) -> str:
    """`JSON.stringify(date)`: UTC, milliseconds, `Z`. A naive datetime is taken as UTC."""
    value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )


def room_event(
    event_type: str,
    room: Doc,
    visitor: Doc,
    agent: Doc | None = None,
    messages: Iterable[Doc] = (),
    old_served_by: Doc | None = None,
    old_department_id: str | None = None,
    *,
    legacy: bool = False,
    send_navigation_history: bool = False,
) -> Payload:
    """A room-based event; `messages` is the room's whole visible history, oldest first."""
    if event_type not in ROOM_EVENT_TYPES:
        raise ValueError(f"{event_type!r} is not one of {ROOM_EVENT_TYPES}")
    if event_type == "LivechatEdit" and _truthy(room.get("open", _UNDEFINED)):
        raise ValueError("Rocket.Chat sends LivechatEdit only for closed rooms (livechat.saveInfo)")
    # The forward callbacks Object.assign these onto the room before calling sendToCRM.
    room = dict(room)
    if old_served_by is not None:
        room["oldServedBy"] = old_served_by
    if old_department_id is not None:
        room["oldDepartmentId"] = old_department_id
    return _crm_payload(event_type, room, visitor, agent, messages, legacy, send_navigation_history)


def message_event(
    room: Doc,
    visitor: Doc,
    agent: Doc | None,
    message: Doc,
    *,
    legacy: bool = False,
    send_navigation_history: bool = False,
) -> Payload:
    """`Message`: sent from afterOmnichannelSaveMessage with `messages=[message]`."""
    if not _is_sent(message, send_navigation_history):
        raise ValueError(f"Rocket.Chat sends no Message webhook for system messages of type {message['t']!r}")
    return _crm_payload("Message", room, visitor, agent, [message], legacy, send_navigation_history)


def lead_capture_event(room: Doc, visitor: Doc, agent: Doc | None, *, legacy: bool = False) -> Payload:
    """`LeadCapture`: sendToCRM(..., includeMessages=false), so `messages` stays empty."""
    return _crm_payload("LeadCapture", room, visitor, agent, (), legacy, False)


def offline_message_event(name: str, email: str, message: str, sent_at: datetime) -> Payload:
    """hooks/offlineMessage.ts: its own small body, not built from a room."""
    return {
        "type": "LivechatOfflineMessage",
        "sentAt": js_date(sent_at),
        "visitor": {"name": name, "email": email},
        "message": message,
    }


def test_webhook_sample(now: datetime) -> Payload:
    """The fixed body of POST /api/v1/livechat/webhook.test; email and phone are strings here."""
    at = js_date(now)
    return {
        "type": "LivechatSession",
        "_id": "fasd6f5a4sd6f8a4sdf",
        "label": "title",
        "topic": "asiodojf",
        "createdAt": at,
        "lastMessageAt": at,
        "tags": ["tag1", "tag2", "tag3"],
        "customFields": {"productId": "123456"},
        "visitor": {
            "_id": "",
            "name": "visitor name",
            "username": "visitor-username",
            "department": "department",
            "email": "email@address.com",
            "phone": "192873192873",
            "ip": "123.456.7.89",
            "browser": "Chrome",
            "os": "Linux",
            "customFields": {"customerId": "123456"},
        },
        "agent": {
            "_id": "asdf89as6df8",
            "username": "agent.username",
            "name": "Agent Name",
            "email": "agent@email.com",
        },
        "messages": [
            {"username": "visitor-username", "msg": "message content", "ts": at},
            {
                "username": "agent.username",
                "agentId": "asdf89as6df8",
                "msg": "message content from agent",
                "ts": at,
            },
        ],
    }


test_webhook_sample.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _crm_payload(
    event_type: str,
    room: Doc,
    visitor: Doc,
    agent: Doc | None,
    messages: Iterable[Doc],
    legacy: bool,
    send_navigation_history: bool,
) -> Payload:
    payload = _guest_info(room, visitor, agent, legacy)
    payload["type"] = event_type
    username = payload["visitor"].get("username", _UNDEFINED)
    payload["messages"] = [
        _message_item(message, username, legacy) for message in messages if _is_sent(message, send_navigation_history)
    ]
    # The old JS switch matched 'LivechatSessionStarted', so LivechatSessionStart got no departmentId.
    extra_type = "LivechatSessionStarted" if legacy and event_type == "LivechatSessionStart" else event_type
    for key in _EXTRA_FIELDS.get(extra_type, ()):
        _put(payload, key, room.get(key, _UNDEFINED))
    result: Payload = _jsonable(payload)
    return result


def _guest_info(room: Doc, visitor: Doc, agent: Doc | None, legacy: bool) -> Payload:
    info: Payload = {"_id": room["_id"]}
    fname = room.get("fname", _UNDEFINED)
    _put(info, "label", fname if _truthy(fname) else room.get("label", _UNDEFINED))
    for key, source in (
        ("topic", "topic"),
        ("createdAt", "ts"),
        ("lastMessageAt", "lm"),
        ("tags", "tags"),
        ("customFields", "livechatData"),
    ):
        _put(info, key, room.get(source, _UNDEFINED))
    guest: Payload = {}
    for key in ("_id", "token", "name", "username"):
        _put(guest, key, visitor.get(key, _UNDEFINED))
    if legacy:
        # Old Livechat.getLivechatRoomGuestInfo started from `email: null, phone: null`.
        guest.update(email=None, phone=None)
    for key in ("department", "ip", "os", "browser"):
        _put(guest, key, visitor.get(key, _UNDEFINED))
    _put(guest, "customFields", visitor.get("livechatData", _UNDEFINED))
    info["visitor"] = guest
    served_by = room.get("servedBy")
    if agent is not None and isinstance(served_by, Mapping) and _truthy(served_by.get("_id", _UNDEFINED)):
        info["agent"] = _agent_info(agent, legacy)
    crm_data = room.get("crmData", _UNDEFINED)
    if _truthy(crm_data):
        info["crmData"] = crm_data
    # Real events send the arrays as stored, not strings (only webhook.test sends strings).
    if visitor.get("visitorEmails"):
        guest["email"] = list(visitor["visitorEmails"])
    if visitor.get("phone"):
        guest["phone"] = list(visitor["phone"])
    return info


def _agent_info(agent: Doc, legacy: bool) -> Payload:
    info: Payload = {}
    for key in ("_id", "username", "name"):
        _put(info, key, agent.get(key, _UNDEFINED))
    if legacy:
        info["email"] = None
    # parseAgentCustomFields keeps the fields flagged sendToIntegrations; pass only those.
    custom_fields = agent.get("customFields", _UNDEFINED)
    if _truthy(custom_fields):
        info["customFields"] = custom_fields
    if agent.get("emails"):
        info["email"] = agent["emails"][0]["address"]
    return info


def _is_sent(message: Doc, send_navigation_history: bool) -> bool:
    """sendMessageType: system messages are dropped except closing (and opted-in navigation) ones."""
    kind = message.get("t", _UNDEFINED)
    if not _truthy(kind):
        return True
    return kind == _CLOSING or (kind == _NAVIGATION and send_navigation_history)


def _message_item(message: Doc, visitor_username: Any, legacy: bool) -> Payload:
    user = message["u"]
    # normalizeMessageFileUpload receives `{ u, ...msg }` and returns it whole, so `u` comes first.
    item: Payload = {"u": user, "_id": message["_id"]}
    _put(item, "username", user.get("username", _UNDEFINED))
    text = message.get("msg", _UNDEFINED)
    if not _truthy(text):
        blocks = message.get("blocks", _UNDEFINED)
        text = _UNDEFINED if blocks is _UNDEFINED else _js_stringify(blocks)
    _put(item, "msg", text)
    if message.get("blocks"):
        item["blocks"] = message["blocks"]
    _put(item, "ts", message.get("ts", _UNDEFINED))
    if legacy:
        # sendToCRM.js @2fc7dd82: no rid, no _updatedAt, and `editedAt: message.editedAt` always.
        _put(item, "editedAt", message.get("editedAt", _UNDEFINED))
    else:
        _put(item, "rid", message.get("rid", _UNDEFINED))
        if _is_edited(message):
            item["editedAt"] = message["editedAt"]
    if user.get("username", _UNDEFINED) != visitor_username:
        _put(item, "agentId", user.get("_id", _UNDEFINED))
    kind = message.get("t", _UNDEFINED)
    if kind == _NAVIGATION:
        _put(item, "navigation", message.get("navigation", _UNDEFINED))
    if kind == _CLOSING:
        item["closingMessage"] = True
    if _truthy(message.get("file", _UNDEFINED)):
        item["file"] = message["file"]
        _put(item, "attachments", message.get("attachments", _UNDEFINED))
    if not legacy:
        _put(item, "_updatedAt", message.get("_updatedAt", _UNDEFINED))
    return item


def _is_edited(message: Doc) -> bool:
    """core-typings isEditedMessage: a Date editedAt and an editedBy with a string _id."""
    edited_by = message.get("editedBy")
    return (
        isinstance(message.get("editedAt"), datetime)
        and isinstance(edited_by, Mapping)
        and isinstance(edited_by.get("_id"), str)
    )


def _truthy(value: Any) -> bool:
    """JavaScript truthiness: only undefined, null, false, 0, NaN and '' are falsy."""
    if value is _UNDEFINED or value is None:
        return False
    if isinstance(value, bool | int | float | str):
        return bool(value) and value == value
    return True


def _put(target: Payload, key: str, value: Any) -> None:
    if value is not _UNDEFINED:
        target[key] = value


def _js_stringify(value: Any) -> str:
    return json.dumps(_jsonable(value), separators=(",", ":"), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return js_date(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items() if item is not _UNDEFINED}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value
