"""Agents' open-chat counts and the atomic reservation that keeps them under capacity, in Redis.

The count is derived from which agent serves which open room (``room -> agent``), changed only by the Lua scripts
below, so applying an event twice changes nothing:
- ``reserve``: take the first candidate (in the caller's ranking) whose load is under their capacity *at this
  instant*, and count the room against them, in one atomic step. Any number of routers racing for the last slot
  of an agent: one gets it, the others get the next candidate. A room already counted is not counted twice.
- ``assign`` (taken / forwarded webhooks): the room moves from its previous agent (if any) to the new one;
- ``close``: the room leaves its agent and is remembered as closed, so a late ``taken`` does not count it again;
- ``release``: a reservation whose Rocket.Chat call failed is undone.

Rocket.Chat's External Service asks for an agent without saying which room (docs/rocketchat.md §4), so its reservations
are *pending*: counted against the agent until the room's ``taken`` webhook arrives (which then takes the pending
slot's place) or ``PENDING_SECONDS`` pass. Keys are computed inside the scripts, so this needs a single Redis, not
Redis Cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from bridge import keys

CLOSED_MEMORY_SECONDS = 86_400
PENDING_SECONDS = 60

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function pending_count(prefix, agent, now)
  local key = prefix .. agent
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end
local function drop(load, agent)
  if tonumber(redis.call('HINCRBY', load, agent, -1)) <= 0 then redis.call('HDEL', load, agent) end
end
"""

# KEYS: room->agent, load, closed marker, room->since. ARGV: room, agent ('' = closed), closed ttl, pending prefix.
_MOVE_ROOM = (
    _COMMON
    + """
local previous = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if ARGV[2] == '' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
elseif redis.call('EXISTS', KEYS[3]) == 1 then
  return previous
end
if previous == ARGV[2] then return previous end
if previous ~= '' then drop(KEYS[2], previous) end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[4], ARGV[1], now_ms())
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  if pending_count(ARGV[4], ARGV[2], now_ms()) > 0 then redis.call('ZPOPMIN', ARGV[4] .. ARGV[2]) end
end
return previous
"""
)

# KEYS: room->agent, load, closed marker, last-assigned, room->since, agents with pending reservations.
# ARGV: room ('' = pending), pending prefix, pending ms, token, move ('1': take the room from its current
# agent), then agent id / capacity pairs in ranked order.
# Returns {outcome, agent id, previous agent id}.
_RESERVE = (
    _COMMON
    + """
local now = now_ms()
local current = false
if ARGV[1] ~= '' then
  if redis.call('EXISTS', KEYS[3]) == 1 then return {'closed', '', ''} end
  current = redis.call('HGET', KEYS[1], ARGV[1])
  if current and ARGV[5] ~= '1' then return {'already', current, current} end
end
for i = 6, #ARGV, 2 do
  local agent, capacity = ARGV[i], tonumber(ARGV[i + 1])
  local load = tonumber(redis.call('HGET', KEYS[2], agent) or '0') + pending_count(ARGV[2], agent, now)
  if capacity == 0 or load < capacity then
    if ARGV[1] == '' then
      redis.call('ZADD', ARGV[2] .. agent, now + tonumber(ARGV[3]), ARGV[4])
      redis.call('SADD', KEYS[6], agent)
    else
      if current then drop(KEYS[2], current) end
      redis.call('HSET', KEYS[1], ARGV[1], agent)
      redis.call('HSET', KEYS[5], ARGV[1], now)
      redis.call('HINCRBY', KEYS[2], agent, 1)
    end
    redis.call('HSET', KEYS[4], agent, now / 1000)
    return {'reserved', agent, current or ''}
  end
end
return {'full', '', current or ''}
"""
)

# KEYS: room->agent, load, room->since. ARGV: room, agent.
# Undo a reservation, only if the room is still counted on that agent.
_RELEASE = (
    _COMMON
    + """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
drop(KEYS[2], ARGV[2])
return 1
"""
)


@dataclass(frozen=True, slots=True)
class Reservation:
    outcome: str  # reserved | already | closed | full
    agent_id: str | None = None
    previous_id: str | None = None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


class LoadBook:
    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._move = connection.register_script(_MOVE_ROOM)
        self._reserve = connection.register_script(_RESERVE)
        self._release = connection.register_script(_RELEASE)

    def reserve(self, room_id: str, ranked: Sequence[tuple[str, int]]) -> Reservation:
        """Count ``room_id`` against the first ``(agent id, capacity)`` with room; capacity 0 = no limit."""
        return self._reserve_for(room_id, ranked, token="")

    def reserve_move(self, room_id: str, ranked: Sequence[tuple[str, int]]) -> Reservation:
        """For a forward: count the served room on the first candidate with room, taking it off its agent."""
        return self._reserve_for(room_id, ranked, token="", move=True)

    def reserve_pending(self, ranked: Sequence[tuple[str, int]]) -> Reservation:
        """A reservation without a room (External Service), held until a ``taken`` webhook or expiry."""
        return self._reserve_for("", ranked, token=uuid.uuid4().hex)

    def _reserve_for(
        self, room_id: str, ranked: Sequence[tuple[str, int]], token: str, move: bool = False
    ) -> Reservation:
        pairs = [str(x) for agent_id, capacity in ranked for x in (agent_id, capacity)]
        outcome, agent_id, previous = self._reserve(
            keys=[
                keys.room_agent(),
                keys.agent_load(),
                keys.closed_room(room_id or "-"),
                keys.last_assigned(),
                keys.room_since(),
                keys.pending_agents(),
            ],
            args=[room_id, keys.pending_prefix(), PENDING_SECONDS * 1000, token, "1" if move else "0", *pairs],
        )
        return Reservation(_text(outcome), _text(agent_id) or None, _text(previous) or None)

    def release(self, room_id: str, agent_id: str) -> bool:
        return bool(
            self._release(keys=[keys.room_agent(), keys.agent_load(), keys.room_since()], args=[room_id, agent_id])
        )

    def assign(self, room_id: str, agent_id: str) -> str:
        """The room is now served by ``agent_id``; returns the previous agent id ('' if none)."""
        return self._run(room_id, agent_id)

    def close(self, room_id: str) -> str:
        return self._run(room_id, "")

    def _run(self, room_id: str, agent_id: str) -> str:
        return _text(
            self._move(
                keys=[keys.room_agent(), keys.agent_load(), keys.closed_room(room_id), keys.room_since()],
                args=[room_id, agent_id, CLOSED_MEMORY_SECONDS, keys.pending_prefix()],
            )
        )

    def counts(self) -> dict[str, int]:
        """Open chats per agent, pending External Service reservations included."""
        counts = {_text(k): int(v) for k, v in self.connection.hgetall(keys.agent_load()).items()}
        agents = [_text(a) for a in self.connection.smembers(keys.pending_agents())]
        if not agents:
            return counts
        now = self._now_ms()
        pipe = self.connection.pipeline(transaction=False)
        for agent_id in agents:
            pipe.zcount(keys.pending_prefix() + agent_id, f"({now}", "+inf")
        for agent_id, live in zip(agents, pipe.execute(), strict=True):
            if live:
                counts[agent_id] = counts.get(agent_id, 0) + int(live)
        return counts

    def last_assigned(self) -> dict[str, float]:
        return {_text(k): float(v) for k, v in self.connection.hgetall(keys.last_assigned()).items()}

    def agent_of(self, room_id: str) -> str | None:
        value = self.connection.hget(keys.room_agent(), room_id)
        return _text(value) if value else None

    def counted_since(self, room_id: str) -> float | None:
        """When the room was last counted on its agent (epoch seconds), by Redis's clock."""
        value = self.connection.hget(keys.room_since(), room_id)
        return int(value) / 1000.0 if value else None

    def rooms_of(self, agent_id: str) -> set[str]:
        return {
            _text(room)
            for room, agent in self.connection.hgetall(keys.room_agent()).items()
            if _text(agent) == agent_id
        }

    def _now_ms(self) -> int:
        seconds, micros = self.connection.time()
        return int(seconds) * 1000 + int(micros) // 1000
