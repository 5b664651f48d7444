"""Rocket.Chat livechat webhook payload -> small typed event. The only place that reads raw payloads.

Rocket.Chat's payloads (``sendToCRM``, docs/rocketchat.md §1) carry the room, the visitor's personal data and the
whole message history. We keep only what the service uses: ids, department, agent, timestamps. No visitor name,
e-mail, phone, IP or message text survives this module.

Rocket.Chat sends no event id and redelivers, so every event derives a stable ``identity`` from the fields that
distinguish one occurrence of it from another (see each class). Redeliveries and concurrent copies carry the same
body, so they share an identity; a genuinely new occurrence (the room taken again, a new message) does not.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from bridge.errors import InvalidEvent
from bridge.identifiers import check_rocketchat_id

# The admin's "test webhook" call (POST livechat/webhook.test) sends this fixed room id (docs/rocketchat.md §1.6).
WEBHOOK_TEST_ROOM_ID = "fasd6f5a4sd6f8a4sdf"
# Characters of an unknown type shown in answers and logs: the type is whatever the sender wrote, of any length.
SHOWN_TYPE_CHARS = 64


@dataclass(frozen=True, slots=True)
class AgentRef:
    id: str
    username: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    TYPE: ClassVar[str] = ""
    room_id: str

    def identity_parts(self) -> tuple[object, ...]:
        return (self.room_id,)

    @property
    def identity(self) -> str:
        """A digest of the type and the distinguishing fields: equal for redeliveries, different otherwise."""
        raw = json.dumps([self.TYPE, *self.identity_parts()], separators=(",", ":"), default=_plain)
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, for the event log (shallow: fields are plain values or an ``AgentRef``)."""
        data: dict[str, Any] = {"type": self.TYPE}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            if isinstance(value, AgentRef):
                value = {"id": value.id, "username": value.username}
            elif isinstance(value, list | tuple | dict):
                return {"type": self.TYPE, **asdict(self)}  # nested values: the general, slower copy
            data[name] = value
        return data


@dataclass(frozen=True, slots=True)
class ChatStarted(Event):
    """``LivechatSessionStart``: a room was created. A room starts once, so the room id is its identity."""

    TYPE: ClassVar[str] = "LivechatSessionStart"
    department_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChatQueued(Event):
    """``LivechatSessionQueued``: the room waits for an agent.

    A room can be queued again later (returned to the queue, forwarded to a department). Such a payload differs
    from the first one in ``lastMessageAt``, ``departmentId`` or ``crmData`` (Rocket.Chat stores our 200 answer on
    the room and sends it back), while a redelivery is byte-identical; those fields make up the identity.
    """

    TYPE: ClassVar[str] = "LivechatSessionQueued"
    department_id: str | None = None
    visitor_id: str | None = None
    created_at: str | None = None
    last_message_at: str | None = None
    crm_digest: str | None = None

    def identity_parts(self) -> tuple[object, ...]:
        return (self.room_id, self.department_id, self.last_message_at, self.crm_digest)


@dataclass(frozen=True, slots=True)
class ChatTaken(Event):
    """``LivechatSessionTaken``: an agent took the room; ``servedBy.ts`` tells one take from a later one."""

    TYPE: ClassVar[str] = "LivechatSessionTaken"
    agent: AgentRef | None = None
    served_at: str | None = None
    department_id: str | None = None

    def identity_parts(self) -> tuple[object, ...]:
        return (self.room_id, self.agent, self.served_at)


@dataclass(frozen=True, slots=True)
class ChatForwarded(Event):
    """``LivechatSessionForwarded``: moved to another agent (``oldServedBy``) or department (``oldDepartmentId``)."""

    TYPE: ClassVar[str] = "LivechatSessionForwarded"
    agent: AgentRef | None = None
    served_at: str | None = None
    department_id: str | None = None
    old_agent: AgentRef | None = None
    old_department_id: str | None = None

    def identity_parts(self) -> tuple[object, ...]:
        return (self.room_id, self.agent, self.served_at, self.department_id, self.old_agent, self.old_department_id)


@dataclass(frozen=True, slots=True)
class ChatClosed(Event):
    """``LivechatSession``: the room was closed (``closedAt`` tells a close from a later reopen-and-close)."""

    TYPE: ClassVar[str] = "LivechatSession"
    agent: AgentRef | None = None
    closed_at: str | None = None
    closer: str | None = None
    department_id: str | None = None
    is_test: bool = False

    def identity_parts(self) -> tuple[object, ...]:
        return (self.room_id, self.closed_at)


@dataclass(frozen=True, slots=True)
class RoomEdited(Event):
    """``LivechatEdit``: a closed room's info was saved. Nothing to route."""

    TYPE: ClassVar[str] = "LivechatEdit"
    last_message_at: str | None = None
    info_digest: str | None = None

    def identity_parts(self) -> tuple[object, ...]:
        return (self.room_id, self.last_message_at, self.info_digest)


@dataclass(frozen=True, slots=True)
class MessageSent(Event):
    """``Message``: one message, from the visitor or (``agentId`` present) from an agent."""

    TYPE: ClassVar[str] = "Message"
    message_id: str = ""
    agent_id: str | None = None
    sent_at: str | None = None
    edited_at: str | None = None

    @property
    def from_agent(self) -> bool:
        return self.agent_id is not None

    def identity_parts(self) -> tuple[object, ...]:
        return (self.room_id, self.message_id, self.edited_at)


@dataclass(frozen=True, slots=True)
class LeadCaptured(Event):
    """``LeadCapture``: a visitor message matched the lead e-mail/phone regex. The data itself is not kept."""

    TYPE: ClassVar[str] = "LeadCapture"
    visitor_digest: str | None = None

    def identity_parts(self) -> tuple[object, ...]:
        return (self.room_id, self.visitor_digest)


@dataclass(frozen=True, slots=True)
class OfflineMessage(Event):
    """``LivechatOfflineMessage``: left while no agent was online. It has no room; ``room_id`` is empty."""

    TYPE: ClassVar[str] = "LivechatOfflineMessage"
    sent_at: str | None = None
    content_digest: str | None = None

    def identity_parts(self) -> tuple[object, ...]:
        return (self.sent_at, self.content_digest)


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A well-formed webhook whose ``type`` this version does not know: most likely a newer Rocket.Chat's new event.

    It is answered 200 ``ignored``, because Rocket.Chat counts only 200 as delivered and older servers retry any other
    status five times. It is deliberately not an ``Event``: it has no identity and cannot reach the event log, the
    spool or a job. ``type`` is exactly what the sender wrote; answers and logs show ``shown`` instead.
    """

    type: str

    @property
    def shown(self) -> str:
        return shown_text(self.type, SHOWN_TYPE_CHARS)


def shown_text(text: str, limit: int) -> str:
    """``text`` safe to echo or log: unprintable characters (controls, newlines, ANSI escapes, bidi overrides, lone
    surrogates) written as Python escapes, at most ``limit`` characters, then ``...`` if anything was cut."""
    pieces: list[str] = []
    size = 0
    for char in text[:limit]:
        piece = char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        if size + len(piece) > limit:
            return "".join(pieces) + "..."
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces) + ("..." if len(text) > limit else "")


class _Fields:
    """Typed access to a JSON object, raising ``InvalidEvent`` that names the dotted field."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def text(self, key: str, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise InvalidEvent(f"field '{self._name(key)}' is required", self._name(key))
            return None
        if not isinstance(value, str):
            raise InvalidEvent(f"field '{self._name(key)}' must be a string", self._name(key))
        if not _is_unicode(value):
            raise InvalidEvent(f"field '{self._name(key)}' is not valid Unicode (lone surrogate)", self._name(key))
        if required and not value:
            raise InvalidEvent(f"field '{self._name(key)}' must not be empty", self._name(key))
        return value

    def ident(self, key: str, required: bool = False) -> str | None:
        """A Rocket.Chat id (``bridge.identifiers``): a string of at most 64 letters, digits, ``_``, ``-`` or ``.``.
        An optional one may be empty (Rocket.Chat sends ``""`` for none in places); nothing else absurd passes."""
        value = self.text(key, required=required)
        if value:
            check_rocketchat_id(value, self._name(key))
        return value

    def obj(self, key: str, required: bool = False) -> _Fields | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise InvalidEvent(f"field '{self._name(key)}' is required", self._name(key))
            return None
        if not isinstance(value, dict):
            raise InvalidEvent(f"field '{self._name(key)}' must be an object", self._name(key))
        return _Fields(value, f"{self._name(key)}.")

    def items(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise InvalidEvent(f"field '{self._name(key)}' must be an array", self._name(key))
        return value

    def digest(self, *keys: str) -> str | None:
        present = {key: self.data[key] for key in keys if self.data.get(key) is not None}
        if not present:
            return None
        raw = json.dumps(present, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def agent(self, key: str, required: bool = False) -> AgentRef | None:
        ref = self.obj(key, required=required)
        if ref is None:
            return None
        return AgentRef(id=ref.ident("_id", required=True) or "", username=ref.text("username"))


def _room_id(fields: _Fields) -> str:
    return fields.ident("_id", required=True) or ""


def _served_by(fields: _Fields) -> tuple[AgentRef | None, str | None]:
    """The serving agent and when it was assigned: ``servedBy`` when sent, else the room's ``agent``."""
    served = fields.obj("servedBy")
    if served is not None:
        return AgentRef(served.ident("_id", required=True) or "", served.text("username")), served.text("ts")
    return fields.agent("agent"), None


def _parse_started(f: _Fields) -> Event:
    return ChatStarted(room_id=_room_id(f), department_id=f.ident("departmentId"))


def _parse_queued(f: _Fields) -> Event:
    visitor = f.obj("visitor", required=True)
    assert visitor is not None
    return ChatQueued(
        room_id=_room_id(f),
        department_id=f.ident("departmentId") or visitor.ident("department"),
        visitor_id=visitor.ident("_id", required=True),
        created_at=f.text("createdAt"),
        last_message_at=f.text("lastMessageAt"),
        crm_digest=f.digest("crmData"),
    )


def _parse_taken(f: _Fields) -> Event:
    agent, served_at = _served_by(f)
    if agent is None:
        raise InvalidEvent("field 'servedBy' is required", "servedBy")
    return ChatTaken(room_id=_room_id(f), agent=agent, served_at=served_at, department_id=f.ident("departmentId"))


def _parse_forwarded(f: _Fields) -> Event:
    agent, served_at = _served_by(f)
    return ChatForwarded(
        room_id=_room_id(f),
        agent=agent,
        served_at=served_at,
        department_id=f.ident("departmentId"),
        old_agent=f.agent("oldServedBy"),
        old_department_id=f.ident("oldDepartmentId"),
    )


def _parse_closed(f: _Fields) -> Event:
    room_id = _room_id(f)
    visitor = f.obj("visitor")
    # The admin's test call sends e-mail and phone as strings where real events send arrays (docs/rocketchat.md §1.6).
    is_test = room_id == WEBHOOK_TEST_ROOM_ID or (visitor is not None and isinstance(visitor.data.get("email"), str))
    agent, _ = _served_by(f)
    return ChatClosed(
        room_id=room_id,
        agent=agent,
        closed_at=f.text("closedAt"),
        closer=f.text("closer"),
        department_id=f.ident("departmentId"),
        is_test=is_test,
    )


def _parse_edit(f: _Fields) -> Event:
    return RoomEdited(
        room_id=_room_id(f),
        last_message_at=f.text("lastMessageAt"),
        info_digest=f.digest("topic", "tags", "customFields", "label"),
    )


def _parse_message(f: _Fields) -> Event:
    messages = f.items("messages")
    if not messages:
        raise InvalidEvent("field 'messages' must hold the message", "messages")
    if not isinstance(messages[0], dict):
        raise InvalidEvent("field 'messages.0' must be an object", "messages.0")
    message = _Fields(messages[0], "messages.0.")
    return MessageSent(
        room_id=_room_id(f),
        message_id=message.ident("_id", required=True) or "",
        agent_id=message.ident("agentId"),
        sent_at=message.text("ts"),
        edited_at=message.text("editedAt"),
    )


def _parse_lead(f: _Fields) -> Event:
    visitor = f.obj("visitor")
    return LeadCaptured(
        room_id=_room_id(f), visitor_digest=visitor.digest("_id", "email", "phone") if visitor else None
    )


def _parse_offline(f: _Fields) -> Event:
    f.obj("visitor")
    return OfflineMessage(room_id="", sent_at=f.text("sentAt"), content_digest=f.digest("visitor", "message"))


# The documented list of types Rocket.Chat sends (docs/rocketchat.md §1.2). There is no LivechatLead and no
# LivechatSessionClosed: the close event is LivechatSession, the lead event is LeadCapture.
PARSERS: dict[str, Callable[[_Fields], Event]] = {
    "LivechatSessionStart": _parse_started,
    "LivechatSessionQueued": _parse_queued,
    "LivechatSessionTaken": _parse_taken,
    "LivechatSessionForwarded": _parse_forwarded,
    "LivechatSession": _parse_closed,
    "LivechatEdit": _parse_edit,
    "Message": _parse_message,
    "LeadCapture": _parse_lead,
    "LivechatOfflineMessage": _parse_offline,
}

EVENT_CLASSES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        ChatStarted,
        ChatQueued,
        ChatTaken,
        ChatForwarded,
        ChatClosed,
        RoomEdited,
        MessageSent,
        LeadCaptured,
        OfflineMessage,
    )
}


def parse_event(payload: object) -> Event | UnknownEvent:
    """Turn a decoded webhook body into a typed event, or raise ``InvalidEvent`` naming what is wrong.

    An object with a non-empty string ``type`` that is not one of ``PARSERS`` is well-formed but unknown: it comes
    back as an ``UnknownEvent`` (its other fields unread), not as an error."""
    if not isinstance(payload, dict):
        raise InvalidEvent("the body must be a JSON object")
    event_type = payload.get("type")
    if event_type is None:
        raise InvalidEvent("field 'type' is required", "type")
    if not isinstance(event_type, str):
        raise InvalidEvent("field 'type' must be a string", "type")
    parser = PARSERS.get(event_type)
    if parser is None:
        if not event_type:
            raise InvalidEvent("field 'type' must not be empty", "type")
        if not _is_unicode(event_type):
            raise InvalidEvent("field 'type' is not valid Unicode (lone surrogate)", "type")
        return UnknownEvent(event_type)
    try:
        return parser(_Fields(payload))
    except RecursionError:
        raise InvalidEvent("the body is nested too deeply") from None


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild an event from ``Event.to_dict()`` (job arguments)."""
    values = dict(data)
    cls = EVENT_CLASSES[values.pop("type")]
    for key in ("agent", "old_agent"):
        if isinstance(values.get(key), dict):
            values[key] = AgentRef(**values[key])
    return cls(**values)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain(value: object) -> object:
    if isinstance(value, AgentRef):
        return [value.id, value.username]
    raise TypeError(f"cannot serialise {type(value).__name__}")
