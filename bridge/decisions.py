"""Explainable decisions: what was decided for a room, among which candidates, and why each was excluded.

Kept in Redis per room (the last ``PER_ROOM`` decisions, expiring after the retention) and in a capped list of
the most recent decisions across rooms, for ``GET /decisions/{roomId}`` and the operator's views.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from bridge import keys

PER_ROOM = 50
RECENT = 500


class DecisionLog:
    def __init__(self, connection: redis.Redis, retention_seconds: int) -> None:
        self.connection = connection
        self.retention = retention_seconds

    def record(self, room_id: str, decision: dict[str, Any]) -> dict[str, Any]:
        entry = {"room_id": room_id, "at": round(time.time(), 3), **decision}
        text = json.dumps(entry, separators=(",", ":"), default=str)
        pipe = self.connection.pipeline(transaction=False)
        pipe.rpush(keys.decisions(room_id), text)
        pipe.ltrim(keys.decisions(room_id), -PER_ROOM, -1)
        pipe.expire(keys.decisions(room_id), self.retention)
        pipe.lpush(keys.recent_decisions(), text)
        pipe.ltrim(keys.recent_decisions(), 0, RECENT - 1)
        pipe.execute()
        return entry

    def for_room(self, room_id: str) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.connection.lrange(keys.decisions(room_id), 0, -1)]

    def recent(self, count: int = 50) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.connection.lrange(keys.recent_decisions(), 0, count - 1)]
