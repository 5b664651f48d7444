"""Each agent's open-chat count, kept in Redis from webhooks, without asking Rocket.Chat.

The count is derived from which agent serves which open room (``room -> agent``), changed by one Lua script per
event, so applying an event twice changes nothing and events for one room commute as far as they can:
- taken / forwarded to agent B: the room moves from its previous agent (if any) to B;
- closed: the room leaves its agent, and is remembered as closed so that a late ``taken`` does not count it again.
A scheduled job compares the counts with Rocket.Chat and corrects drift (routing issue).
"""

from __future__ import annotations

import redis

from bridge import keys

CLOSED_MEMORY_SECONDS = 86_400

# KEYS: room->agent hash, load hash, closed marker. ARGV: room id, new agent id ('' = closed), closed ttl.
# Returns the previous agent id (or '').
_MOVE_ROOM = """
local previous = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if ARGV[2] == '' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
elseif redis.call('EXISTS', KEYS[3]) == 1 then
  return previous
end
if previous == ARGV[2] then return previous end
if previous ~= '' then
  if tonumber(redis.call('HINCRBY', KEYS[2], previous, -1)) <= 0 then redis.call('HDEL', KEYS[2], previous) end
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return previous
"""


class LoadBook:
    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._move = connection.register_script(_MOVE_ROOM)

    def assign(self, room_id: str, agent_id: str) -> str:
        """The room is now served by ``agent_id``; returns the previous agent id ('' if none)."""
        return self._run(room_id, agent_id)

    def close(self, room_id: str) -> str:
        return self._run(room_id, "")

    def _run(self, room_id: str, agent_id: str) -> str:
        previous = self._move(
            keys=[keys.room_agent(), keys.agent_load(), keys.closed_room(room_id)],
            args=[room_id, agent_id, CLOSED_MEMORY_SECONDS],
        )
        return previous.decode() if isinstance(previous, bytes) else str(previous or "")

    def counts(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.connection.hgetall(keys.agent_load()).items()}

    def agent_of(self, room_id: str) -> str | None:
        value = self.connection.hget(keys.room_agent(), room_id)
        return value.decode() if value else None
