"""Caps on queued voice requests (``POST /voice/route``): per API token and in total.

A voice request is an RQ job on its own queue (``bridge.jobqueue.voice_queue_name``), which workers read after the
chats' queue, so voice jobs never delay chats. How many may wait is capped, so a flood of requests (15,562 random
``requestId`` in 20 s, each a 2.3 KB job) cannot fill Redis:

- ``VOICE_QUEUE_MAX`` requests queued in total and ``VOICE_QUEUE_MAX_PER_TOKEN`` per API token. Past either cap the
  request is answered 429 with a JSON error naming the cap and nothing is recorded;
- a request counts from its acceptance until its job starts (``release``, called by the job), so a request that
  was accepted but whose job is still waiting holds its slot, and a job RQ retries after a failure does not;
- the token is never stored: a request counts against ``token_digest(token)``, a salted SHA-256 prefix (and only
  tokens that passed the API's check get one, so there are as many sets as configured tokens);
- a request id already queued is answered 202 again without counting twice (the id is the RQ job's, so it is
  idempotent);
- an entry whose job never started (its queue deleted by hand) is forgotten after ``FORGET_SECONDS``.

Kept in sorted sets of request ids by acceptance time (``ob:voice-queued``, ``ob:voice-queued:<digest>``), checked
and written by one Lua script, so concurrent requests cannot overshoot a cap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from bridge import keys
from bridge.settings import Settings

FORGET_SECONDS = 3600
_SALT = b"omnibridge voice queue token\x00"

# KEYS: all queued, queued for this token, the token digests. ARGV: request id, max total, max per token,
# forget after s, token digest. Returns {outcome, queued in total, queued for this token}; outcome is 'ok',
# 'queued' (already counted), 'total' or 'token' (a cap is reached: nothing written).
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local stale = now - tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', stale)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', stale)
local total = redis.call('ZCARD', KEYS[1])
local mine = redis.call('ZCARD', KEYS[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {'queued', total, mine} end
if total >= tonumber(ARGV[2]) then return {'total', total, mine} end
if mine >= tonumber(ARGV[3]) then return {'token', total, mine} end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[5])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return {'ok', total + 1, mine + 1}
"""

# KEYS: all queued, the token digests. ARGV: request id, the prefix of the per-token sets.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
for _, digest in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('ZREM', ARGV[2] .. digest, ARGV[1])
end
return 1
"""


def token_digest(token: str) -> str:
    """What a token's requests are counted under: 16 hex characters of a salted SHA-256, never the token."""
    return hashlib.sha256(_SALT + token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class Claim:
    outcome: str  # 'ok', 'queued', 'total' or 'token'
    queued: int  # requests queued in total, this one included when it was counted
    queued_for_token: int

    @property
    def refused(self) -> bool:
        return self.outcome in ("total", "token")


class VoiceSlots:
    def __init__(self, connection: redis.Redis, max_total: int, max_per_token: int) -> None:
        self.connection = connection
        self.max_total = max_total
        self.max_per_token = max_per_token
        self._claim = connection.register_script(_CLAIM)
        self._release = connection.register_script(_RELEASE)

    @classmethod
    def from_settings(cls, connection: redis.Redis, settings: Settings) -> VoiceSlots:
        return cls(connection, settings.voice_queue_max, settings.voice_queue_max_per_token)

    def claim(self, digest: str, request_id: str) -> Claim:
        """Count ``request_id`` against the caps (for the token whose digest is ``digest``), unless one is reached."""
        outcome, total, mine = self._claim(
            keys=[keys.voice_queued(), keys.voice_queued_by(digest), keys.voice_tokens()],
            args=[request_id, self.max_total, self.max_per_token, FORGET_SECONDS, digest],
        )
        return Claim(outcome.decode() if isinstance(outcome, bytes) else str(outcome), int(total), int(mine))

    def release(self, request_id: str) -> None:
        """The request's job started (or was never made): it no longer counts."""
        self._release(keys=[keys.voice_queued(), keys.voice_tokens()], args=[request_id, keys.voice_queued_by("")])

    def queued(self) -> int:
        return int(self.connection.zcard(keys.voice_queued()))
