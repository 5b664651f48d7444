"""Explainable decisions: what was decided for a chat, a voice request or an External Service query, among which
candidates, and why each was excluded.

**Records, by kind and id.** Each record is a Redis list keyed by its kind and its id, ``ob:decisions:<kind>:<id>``
(``bridge.keys.decisions``): ``chat`` (a room id; a chat's re-routes go in its record too), ``voice`` (the request
id of ``POST /voice/route``), ``external`` (the department an External Service query named, ``-`` for none). The
kind is a fixed word chosen by the caller, never by input, and ids hold no ``:`` (``bridge.identifiers``), so no
input can write into another kind's record: the room ``voice-x`` is ``ob:decisions:chat:voice-x``, never the voice
request ``x`` (``ob:decisions:voice:x``). An id that is not a valid id (from a source that skipped the edge
checks) is keyed by its digest, ``~`` + 40 hex characters, which no valid id can spell.

**Bounds** (settings; the README's bad-input table says what happens at each):

- *size of one decision*: strings longer than ``TEXT_LIMIT`` are cut (``...``); a decision still over
  ``DECISION_MAX_BYTES`` (as JSON) loses candidates, then attempts, from the end, and says how many in
  ``candidates_omitted``/``attempts_omitted``; one still over keeps only its core fields and ``"truncated": true``;
- *decisions per record*: the last ``PER_RECORD`` of its kind (a chat's: 50; a voice request has one per run of its
  job, 10 kept; an External Service department one per query not shared with its parallel copies, 20 kept);
- *records per kind*: ``DECISION_MAX_RECORDS``. Each kind has an index, a sorted set of its record ids by expiry
  time (``ob:decisions-index:<kind>``); past the cap the records closest to expiry are deleted, so records of
  requests that did nothing go first, and a flood of one kind never deletes another kind's records;
- *retention*: ``DECISION_RETENTION_SECONDS`` from a record's last decision, or ``DECISION_NOOP_RETENTION_SECONDS``
  for a record whose every decision did nothing (``NOOP_OUTCOMES``: a chat that was gone, a voice request that
  assigned nothing, an External Service query answered "no agent"). A record that did something once keeps the
  full retention from then on; a later no-op decision does not shorten it;
- *the recent list* (every kind, newest first, for the live view and ``omnibridge status``): the last ``RECENT``.

One Lua script writes a decision, its index entry, the evictions and the recent list (keys of evicted records are
computed in the script: a single Redis, not Redis Cluster, as for ``bridge.load``).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import redis

from bridge import keys
from bridge.identifiers import is_rocketchat_id
from bridge.settings import Settings

KINDS = ("chat", "voice", "external")
PER_RECORD = {"chat": 50, "voice": 10, "external": 20}
PER_ROOM = PER_RECORD["chat"]  # the name before voice and External Service records had their own kinds
RECENT = 500
TEXT_LIMIT = 500
CORE_TEXT_LIMIT = 100
# Outcomes that did nothing, per kind: a record made only of these keeps DECISION_NOOP_RETENTION_SECONDS.
NOOP_OUTCOMES: dict[str, frozenset[str]] = {
    "chat": frozenset({"gone"}),
    "voice": frozenset({"no agent", "failed"}),
    "external": frozenset({"no agent"}),
}
CORE_FIELDS = (
    "record_kind",
    "record_id",
    "room_id",
    "at",
    "kind",
    "outcome",
    "strategy",
    "agent_id",
    "agent_username",
    "department_id",
    "extension",
)

# KEYS: the record, its kind's index, the recent list.
# ARGV: decision JSON, per record, retention s, no-op retention s, no-op ('1'/'0'), max records per kind,
# record key prefix of the kind, record id (its index member), recent max.
# Returns the number of records evicted by the count cap.
_RECORD = """
local now = tonumber(redis.call('TIME')[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
local retention = tonumber(ARGV[3])
local ttl = retention
if ARGV[5] == '1' then
  ttl = redis.call('TTL', KEYS[1])
  if ttl < tonumber(ARGV[4]) then
    ttl = tonumber(ARGV[4])
    redis.call('EXPIRE', KEYS[1], ttl)
  end
else
  redis.call('EXPIRE', KEYS[1], ttl)
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local evicted = 0
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #gone, 2 do
    redis.call('DEL', ARGV[7] .. gone[i])
    evicted = evicted + 1
  end
end
redis.call('EXPIRE', KEYS[2], retention)
redis.call('LPUSH', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[9]) - 1)
return evicted
"""


def key_id(record_id: str) -> str:
    """The id as it appears in keys: itself when it is a valid id, else ``~`` and a digest (bounded, distinct)."""
    if is_rocketchat_id(record_id):
        return record_id
    return "~" + hashlib.sha256(record_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class DecisionLog:
    def __init__(
        self,
        connection: redis.Redis,
        retention_seconds: int,
        noop_retention_seconds: int | None = None,
        max_records: int = 100_000,
        max_bytes: int = 8192,
    ) -> None:
        self.connection = connection
        self.retention = retention_seconds
        self.noop_retention = min(retention_seconds, noop_retention_seconds or retention_seconds)
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._record = connection.register_script(_RECORD)

    @classmethod
    def from_settings(cls, connection: redis.Redis, settings: Settings) -> DecisionLog:
        return cls(
            connection,
            settings.decision_retention_seconds,
            settings.decision_noop_retention_seconds,
            settings.decision_max_records,
            settings.decision_max_bytes,
        )

    def record(self, kind: str, record_id: str, decision: dict[str, Any]) -> dict[str, Any]:
        """Append ``decision`` to the record of ``kind`` (``KINDS``) and ``record_id``; the entry as stored."""
        if kind not in KINDS:
            raise ValueError(f"unknown decision record kind {kind!r}; one of {', '.join(KINDS)}")
        entry: dict[str, Any] = {"record_kind": kind, "record_id": record_id}
        if kind == "chat":
            entry["room_id"] = record_id
        entry |= {"at": round(time.time(), 3), **decision}
        text = bounded(entry, self.max_bytes)
        stored = key_id(record_id)
        self._record(
            keys=[keys.decisions(kind, stored), keys.decision_index(kind), keys.recent_decisions()],
            args=[
                text,
                PER_RECORD[kind],
                self.retention,
                self.noop_retention,
                "1" if decision.get("outcome") in NOOP_OUTCOMES[kind] else "0",
                self.max_records,
                keys.decisions(kind, ""),
                stored,
                RECENT,
            ],
        )
        return json.loads(text)

    def read(self, kind: str, record_id: str) -> list[dict[str, Any]]:
        """The decisions of one record, oldest first (empty if none, or expired, or evicted)."""
        if kind not in KINDS:
            raise ValueError(f"unknown decision record kind {kind!r}; one of {', '.join(KINDS)}")
        return [json.loads(item) for item in self.connection.lrange(keys.decisions(kind, key_id(record_id)), 0, -1)]

    def for_room(self, room_id: str) -> list[dict[str, Any]]:
        """A chat's decisions (``read("chat", room_id)``)."""
        return self.read("chat", room_id)

    def count(self, kind: str) -> int:
        """Records of ``kind`` in its index (expired ones leave it at the next write)."""
        return int(self.connection.zcard(keys.decision_index(kind)))

    def recent(self, count: int = 50) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.connection.lrange(keys.recent_decisions(), 0, count - 1)]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _capped(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "..."
    if isinstance(value, dict):
        return {key: _capped(item, limit) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_capped(item, limit) for item in value]
    return value


def bounded(entry: dict[str, Any], max_bytes: int) -> str:
    """``entry`` as JSON (ASCII, so characters are bytes) of at most ``max_bytes``: strings cut to ``TEXT_LIMIT``,
    then candidates and attempts dropped from the end (counted in ``<field>_omitted``), then only the core."""
    entry = _capped(entry, TEXT_LIMIT)
    text = _dumps(entry)
    for field in ("candidates", "attempts"):
        if len(text) <= max_bytes:
            return text
        items = entry.get(field)
        if not isinstance(items, list) or not items:
            continue
        excess = len(text) - max_bytes + len(f',"{field}_omitted":{len(items)}')
        keep, dropped = len(items), 0
        while keep > 0 and dropped < excess:
            keep -= 1
            dropped += len(_dumps(items[keep])) + 1
        entry = {**entry, field: items[:keep], f"{field}_omitted": len(items) - keep}
        text = _dumps(entry)
    if len(text) <= max_bytes:
        return text
    core = {name: _capped(entry[name], CORE_TEXT_LIMIT) for name in CORE_FIELDS if name in entry}
    return _dumps({**core, "truncated": True})
