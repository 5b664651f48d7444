"""The routing queue: chats waiting for an agent, per department, in order of priority then arrival.

A chat enters when Rocket.Chat queues it and leaves when it is served (by the bridge or anyone else), closed, or
its inquiry is gone. Nothing leaves because nobody was free: the chat waits, and is routed when capacity
appears (a chat closes, an agent becomes available, the directory refreshes, or the periodic tick).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from bridge import keys

# Rocket.Chat's LivechatPriorityWeight: lower is more urgent; inquiries without a priority weigh 99.
NO_PRIORITY = 99


@dataclass(frozen=True, slots=True)
class WaitingChat:
    room_id: str
    department_id: str | None
    queued_at: float
    visitor_id: str | None = None
    inquiry_id: str | None = None
    priority: int = NO_PRIORITY
    reserved_for: str | None = None
    excluded: tuple[str, ...] = ()
    attempts: int = 0
    last_outcome: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _score(priority: int, queued_at: float) -> float:
    return priority * 1e13 + queued_at * 1000


class WaitingQueue:
    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    def add(self, chat: WaitingChat) -> bool:
        """Put a chat in its department's queue; False if it was already waiting (its place is kept)."""
        pipe = self.connection.pipeline(transaction=True)
        pipe.zadd(keys.waiting(chat.department_id), {chat.room_id: _score(chat.priority, chat.queued_at)}, nx=True)
        pipe.hsetnx(keys.waiting_chat(chat.room_id), "data", json.dumps(_plain(chat)))
        pipe.sadd(keys.waiting_departments(), chat.department_id or "-")
        added, _, _ = pipe.execute()
        return bool(added)

    def get(self, room_id: str) -> WaitingChat | None:
        raw = self.connection.hget(keys.waiting_chat(room_id), "data")
        if not raw:
            return None
        data = json.loads(raw)
        return WaitingChat(**{**data, "excluded": tuple(data.get("excluded") or ())})

    def update(self, chat: WaitingChat) -> None:
        """Save what routing learnt (inquiry id, priority, exclusions...); re-rank if the priority changed."""
        if self.connection.zscore(keys.waiting(chat.department_id), chat.room_id) is None:
            return  # it left the queue meanwhile
        pipe = self.connection.pipeline(transaction=True)
        pipe.hset(keys.waiting_chat(chat.room_id), "data", json.dumps(_plain(chat)))
        pipe.zadd(keys.waiting(chat.department_id), {chat.room_id: _score(chat.priority, chat.queued_at)}, xx=True)
        pipe.execute()

    def remove(self, room_id: str) -> WaitingChat | None:
        chat = self.get(room_id)
        department = chat.department_id if chat else None
        pipe = self.connection.pipeline(transaction=True)
        pipe.zrem(keys.waiting(department), room_id)
        pipe.delete(keys.waiting_chat(room_id))
        pipe.execute()
        return chat

    def room_ids(self, department_id: str | None, limit: int = 1000) -> list[str]:
        return [r.decode() for r in self.connection.zrange(keys.waiting(department_id), 0, limit - 1)]

    def departments(self) -> list[str | None]:
        names = sorted(d.decode() for d in self.connection.smembers(keys.waiting_departments()))
        return [None if name == "-" else name for name in names]

    def count(self) -> int:
        return sum(self.connection.zcard(keys.waiting(d)) for d in self.departments())

    def oldest(self) -> list[WaitingChat]:
        chats = [self.get(room) for d in self.departments() for room in self.room_ids(d, limit=50)]
        return sorted((c for c in chats if c is not None), key=lambda c: c.queued_at)


def _plain(chat: WaitingChat) -> dict[str, Any]:
    data = {name: getattr(chat, name) for name in WaitingChat.__dataclass_fields__}
    data["excluded"] = list(chat.excluded)
    return data
