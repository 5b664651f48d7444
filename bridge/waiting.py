"""The routing queue: chats waiting for an agent, per department, in order of priority then arrival.

A chat enters when Rocket.Chat queues it and leaves when it is served (by the bridge or anyone else), closed, or
its inquiry is gone. Nothing leaves because nobody was free: the chat waits, and is routed when capacity
appears (a chat closes, an agent becomes available, the directory refreshes, or the periodic tick).

The queue is bounded (``WAITING_MAX_CHATS``, checked in the script that adds a chat): past the bound a chat is not
added. That loses no real chat: the periodic reconciler (``bridge.reconcile.recover_queued``, every
``INQUIRY_RECONCILE_SECONDS``) lists the inquiries Rocket.Chat really has queued and adds each one the bridge does
not know, once there is room.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from bridge import keys

# Rocket.Chat's LivechatPriorityWeight: lower is more urgent; inquiries without a priority weigh 99.
NO_PRIORITY = 99

# What ``offer`` did with a chat.
ADDED = "added"
ALREADY_WAITING = "already waiting"  # its place is kept
FULL = "full"  # WAITING_MAX_CHATS chats wait already: not added

# KEYS: the department's waiting set, the chat's hash, the set of departments.
# ARGV: room id, score, the chat's data, the department's name in that set, the bound (0: none), waiting set prefix.
_OFFER_SCRIPT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('HSETNX', KEYS[2], 'data', ARGV[3])
  return 0
end
local bound = tonumber(ARGV[5])
if bound > 0 then
  local waiting = 0
  for _, department in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    waiting = waiting + redis.call('ZCARD', ARGV[6] .. department)
  end
  if waiting >= bound then
    return 2
  end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSETNX', KEYS[2], 'data', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
"""
_OFFERED = {0: ALREADY_WAITING, 1: ADDED, 2: FULL}


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
    def __init__(self, connection: redis.Redis, max_chats: int = 0) -> None:
        self.connection = connection
        self.max_chats = max_chats  # 0: no bound (readers that only count)
        self._offer = connection.register_script(_OFFER_SCRIPT)

    def offer(self, chat: WaitingChat) -> str:
        """Put a chat in its department's queue: ``ADDED``; ``ALREADY_WAITING`` (its place is kept); or ``FULL``
        (``max_chats`` chats are waiting: nothing was written)."""
        answer = self._offer(
            keys=[keys.waiting(chat.department_id), keys.waiting_chat(chat.room_id), keys.waiting_departments()],
            args=[
                chat.room_id,
                repr(_score(chat.priority, chat.queued_at)),
                json.dumps(_plain(chat)),
                chat.department_id or "-",
                self.max_chats,
                keys.waiting_prefix(),
            ],
        )
        return _OFFERED[int(answer)]

    def add(self, chat: WaitingChat) -> bool:
        """Put a chat in its department's queue; False if it was already waiting (its place is kept) or the queue
        is full."""
        return self.offer(chat) == ADDED

    def get(self, room_id: str) -> WaitingChat | None:
        return _chat(self.connection.hget(keys.waiting_chat(room_id), "data"))

    def get_many(self, room_ids: list[str]) -> list[WaitingChat | None]:
        """``get`` for many rooms in one round trip."""
        pipe = self.connection.pipeline(transaction=False)
        for room_id in room_ids:
            pipe.hget(keys.waiting_chat(room_id), "data")
        return [_chat(raw) for raw in pipe.execute()] if room_ids else []

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


def _chat(raw: bytes | None) -> WaitingChat | None:
    if not raw:
        return None
    data = json.loads(raw)
    return WaitingChat(**{**data, "excluded": tuple(data.get("excluded") or ())})


def _plain(chat: WaitingChat) -> dict[str, Any]:
    data = {name: getattr(chat, name) for name in WaitingChat.__dataclass_fields__}
    data["excluded"] = list(chat.excluded)
    return data
