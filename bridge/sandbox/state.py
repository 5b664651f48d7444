"""The sandbox's in-memory Rocket.Chat: users, departments, livechat rooms and inquiries.

Documents are plain dicts shaped like Rocket.Chat's Mongo documents, with dates already in their
JSON form (ISO-8601 strings), so endpoints can return them as they are. One re-entrant lock guards
everything: the HTTP server runs in its own thread while tests call the helpers below.
Helpers return deep copies; tests should change state only through them.

`listeners` are called as listener(event_type, room) after a room is queued, taken, forwarded or
closed, outside the lock, on the thread that made the change (the server's event loop for API
calls), so a listener must return quickly: hand the work to a queue or a thread.
"""

import copy
import logging
import random
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from bridge.sandbox import documents
from bridge.sandbox.controls import Controls
from bridge.sandbox.credentials import Credentials
from bridge.sandbox.documents import Doc, connection_of, iso
from bridge.sandbox.permissions import default_permissions, roles_allow

Listener = Callable[[str, Doc], None]
Event = tuple[str, Doc]

# Webhook event types (docs/rocketchat.md §1.2); the close event really is called "LivechatSession".
QUEUED = "LivechatSessionQueued"
TAKEN = "LivechatSessionTaken"
FORWARDED = "LivechatSessionForwarded"
CLOSED = "LivechatSession"

AGENT_ROLES = ("user", "livechat-agent")
_ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"  # Meteor's Random.id()
_TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

log = logging.getLogger(__name__)


class SandboxState(Controls):
    def __init__(
        self,
        version: str = "7.13.9",
        *,
        accept_when_idle: bool = True,
        rate_limit_enabled: bool = True,
        rate_limit_calls: int = 10,
        rate_limit_window_ms: int = 60_000,
        seed: int | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(
            rate_limit_enabled=rate_limit_enabled,
            rate_limit_calls=rate_limit_calls,
            rate_limit_window_ms=rate_limit_window_ms,
        )
        self.version = version  # its major version decides response shapes
        self.accept_when_idle = accept_when_idle  # Rocket.Chat's Livechat_enabled_when_agent_idle
        self.clock = clock or (lambda: datetime.now(UTC))
        self.lock = threading.RLock()
        self.users: dict[str, Doc] = {}
        self.departments: dict[str, Doc] = {}
        self.department_agents: dict[str, Doc] = {}
        self.rooms: dict[str, Doc] = {}
        self.inquiries: dict[str, Doc] = {}
        self.visitors: dict[str, Doc] = {}
        self.messages: dict[str, list[Doc]] = {}  # room id -> its messages, oldest first
        self.permissions: dict[str, set[str]] = default_permissions()
        self.listeners: list[Listener] = []
        self._random = random.Random(seed)
        self.credentials = Credentials(self._new_token)

    @property
    def major(self) -> int:
        return int(self.version.split(".", 1)[0])

    def now(self) -> str:
        return iso(self.clock())

    def new_id(self, length: int = 17) -> str:
        with self.lock:
            return "".join(self._random.choice(_ID_ALPHABET) for _ in range(length))

    def _new_token(self) -> str:
        with self.lock:
            return "".join(self._random.choice(_TOKEN_ALPHABET) for _ in range(43))

    # -- users and auth ---------------------------------------------------------------------------

    def add_account(
        self,
        username: str,
        roles: Iterable[str] = ("user",),
        *,
        pat: str | None = None,
        password: str | None = None,
        name: str | None = None,
        **fields: Any,
    ) -> tuple[str, str]:
        """A user that calls the API (service account, manager, admin). Returns (user id, token)."""
        with self.lock:
            user = self._insert_user(username, roles, name, status="online", **fields)
        if password is not None:
            self.credentials.set_password(user["_id"], password)
        return user["_id"], self.credentials.add_token(user["_id"], pat)

    def add_agent(
        self,
        username: str,
        *,
        name: str | None = None,
        status: str = "online",
        statusLivechat: str = "available",  # noqa: N803 - Rocket.Chat's field name
        max_chats: int | str | None = None,
        extension: str | None = None,
        departments: Iterable[str] = (),
        roles: Iterable[str] = AGENT_ROLES,
        email: str | None = None,
        active: bool = True,
        pat: str | None = None,
        password: str | None = None,
        **fields: Any,
    ) -> Doc:
        """A livechat agent. `max_chats` is stored as given (Rocket.Chat may hold "5" or 5)."""
        with self.lock:
            if extension is not None and any(u.get("extension") == extension for u in self.users.values()):
                raise ValueError(f"extension {extension} is already assigned")
            extra: Doc = {"statusLivechat": statusLivechat, "livechatCount": 0, **fields}
            if max_chats is not None:
                extra["livechat"] = {"maxNumberSimultaneousChat": max_chats}
            if extension is not None:
                extra["extension"] = extension
            user = self._insert_user(username, roles, name, status=status, email=email, **extra)
            user["active"] = active
            if pat is not None:
                self.credentials.add_token(user["_id"], pat)
            if password is not None:
                self.credentials.set_password(user["_id"], password)
            for department_id in departments:
                self.link_agent(department_id, user["_id"])
            return copy.deepcopy(user)

    def _insert_user(
        self,
        username: str,
        roles: Iterable[str],
        name: str | None,
        *,
        status: str,
        email: str | None = None,
        **fields: Any,
    ) -> Doc:
        if any(user["username"] == username for user in self.users.values()):
            raise ValueError(f"username {username!r} is taken")
        user = documents.user_doc(self.new_id(), username, name, list(roles), status, email, self.now())
        user.update(fields)
        self.users[user["_id"]] = user
        return user

    def authenticate(self, user_id: str | None, token: str | None) -> Doc | None:
        """The user behind X-User-Id + X-Auth-Token, or None (both must match)."""
        if not user_id or not token or self.credentials.owner_of(token) != user_id:
            return None
        with self.lock:
            user = self.users.get(user_id)
            return copy.deepcopy(user) if user else None

    def resolve_user(self, ref: str) -> Doc:
        """The stored user with this _id or username (the live document; hold the lock)."""
        user = self.users.get(ref) or next((u for u in self.users.values() if u["username"] == ref), None)
        if user is None:
            raise KeyError(f"no user {ref!r}")
        return user

    def has_permission(self, user: Doc, permission: str) -> bool:
        with self.lock:
            return roles_allow(self.permissions, user.get("roles", ()), permission)

    def grant(self, role: str, permission: str) -> None:
        with self.lock:
            self.permissions.setdefault(permission, set()).add(role)

    def revoke(self, role: str, permission: str) -> None:
        with self.lock:
            self.permissions.get(permission, set()).discard(role)

    def set_presence(
        self,
        agent: str,
        *,
        status: str | None = None,
        statusLivechat: str | None = None,  # noqa: N803 - Rocket.Chat's field name
    ) -> Doc:
        with self.lock:
            user = self.resolve_user(agent)
            if status is not None:
                user["status"] = status
                user["statusConnection"] = connection_of(status)
            if statusLivechat is not None:
                user["statusLivechat"] = statusLivechat
            user["_updatedAt"] = self.now()
            return copy.deepcopy(user)

    # -- departments ------------------------------------------------------------------------------

    def add_department(
        self, name: str, *, enabled: bool = True, agents: Iterable[str] = (), department_id: str | None = None
    ) -> Doc:
        with self.lock:
            department = documents.department_doc(department_id or self.new_id(), name, enabled, self.now())
            self.departments[department["_id"]] = department
            for agent in agents:
                self.link_agent(department["_id"], agent)
            return copy.deepcopy(department)

    def link_agent(self, department_id: str, agent: str, *, order: int = 0) -> Doc:
        """Put an agent (id or username) in a department: a LivechatDepartmentAgents document."""
        with self.lock:
            department = self.departments[department_id]
            user = self.resolve_user(agent)
            link = documents.link_doc(self.new_id(), department, user, order)
            self.department_agents[link["_id"]] = link
            department["numAgents"] = len(self.links(department_id=department_id))
            return copy.deepcopy(link)

    def links(self, *, department_id: str | None = None, agent_id: str | None = None) -> list[Doc]:
        """Department-agent links (live documents; hold the lock)."""
        return [
            link
            for link in self.department_agents.values()
            if department_id in (None, link["departmentId"]) and agent_id in (None, link["agentId"])
        ]

    # -- livechat rooms ---------------------------------------------------------------------------

    def open_chat(
        self, department: str | None = None, visitor: Doc | None = None, message: str = "Hello, I need help"
    ) -> tuple[Doc, Doc]:
        """A visitor starts a chat: a new open room plus its queued inquiry (Manual_Selection)."""
        with self.lock:
            if department is not None and department not in self.departments:
                raise KeyError(f"no department {department!r}")
            now = self.now()
            guest = documents.visitor_doc(self.new_id(), len(self.visitors) + 1, self.new_id(), now, visitor or {})
            room = documents.room_doc(self.new_id(), guest, now)
            inquiry = documents.inquiry_doc(self.new_id(), room, message, now)
            if department is not None:
                room["departmentId"] = inquiry["department"] = department
                guest.setdefault("department", department)
            self.visitors[guest["_id"]] = guest
            self.rooms[room["_id"]] = room
            self.inquiries[inquiry["_id"]] = inquiry
            self.messages[room["_id"]] = [documents.visitor_message_doc(self.new_id(), room, guest, message, now)]
            result = copy.deepcopy(room), copy.deepcopy(inquiry)
        self.emit([(QUEUED, result[0])])
        return result

    def serve(self, rid: str, agent_id: str) -> None:
        """Make an agent serve a room (no checks; hold the lock). Callers emit the event."""
        room, agent, now = self.rooms[rid], self.users[agent_id], self.now()
        room["servedBy"] = {"_id": agent["_id"], "username": agent["username"], "ts": now}
        room["_updatedAt"] = now
        room.pop("queuedAt", None)
        for inquiry in self.inquiries.values():
            if inquiry["rid"] == rid:
                inquiry.update(status="taken", takenAt=now, _updatedAt=now)
                inquiry.pop("queuedAt", None)
                inquiry.pop("defaultAgent", None)
        agent["lastRoutingTime"] = now
        agent["livechatCount"] = agent.get("livechatCount", 0) + 1
        for link in self.links(department_id=room.get("departmentId"), agent_id=agent_id):
            link["count"] += 1

    def assign(self, rid: str, agent: str) -> Doc:
        """Test set-up: the agent (id or username) serves the room, whatever its presence."""
        with self.lock:
            self.serve(rid, self.resolve_user(agent)["_id"])
            room = self.rooms[rid]
            result = copy.deepcopy(room)
        self.emit([(TAKEN, result)])
        return result

    def close_room(self, rid: str, *, closer: str = "user", closed_by: str | None = None) -> Doc:
        """Close an open room; its inquiry is deleted, as Rocket.Chat does."""
        with self.lock:
            room = self.rooms[rid]
            if not room.get("open"):
                raise ValueError(f"room {rid} is already closed")
            if closed_by is not None:
                user = self.resolve_user(closed_by)
                by = {"_id": user["_id"], "username": user["username"]}
            elif closer == "visitor":
                by = {"_id": room["v"]["_id"], "username": room["v"]["username"]}
            elif "servedBy" in room:
                by = {"_id": room["servedBy"]["_id"], "username": room["servedBy"]["username"]}
            else:
                raise ValueError("nobody serves this room: say who closes it with closed_by=")
            now = self.now()
            del room["open"]  # closed rooms have no `open` key at all
            room.update(closedAt=now, closedBy=by, closer=closer, _updatedAt=now)
            self.inquiries = {key: inq for key, inq in self.inquiries.items() if inq["rid"] != rid}
            result = copy.deepcopy(room)
        self.emit([(CLOSED, result)])
        return result

    def open_chats_of(self, agent_id: str) -> list[Doc]:
        with self.lock:
            rooms = [
                room
                for room in self.rooms.values()
                if room.get("open") and room.get("servedBy", {}).get("_id") == agent_id
            ]
            return copy.deepcopy(rooms)

    def messages_of(self, rid: str) -> list[Doc]:
        with self.lock:
            return copy.deepcopy(self.messages.get(rid, []))

    def emit(self, events: Iterable[Event]) -> None:
        """Tell listeners, outside the lock. Each event carries a snapshot taken under the lock."""
        for event_type, room in events:
            for listener in list(self.listeners):
                try:
                    listener(event_type, copy.deepcopy(room))
                except Exception:
                    # Rocket.Chat fires webhooks without awaiting them (`void sendRequest`): a failing
                    # subscriber never changes the API's answer. Log it loudly instead.
                    log.exception("sandbox listener failed on %s", event_type)
