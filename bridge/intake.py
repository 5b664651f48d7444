"""Making an accepted webhook durable: into Redis's event log, or into the local spool while Redis cannot take it.

``record()`` answers only once the event is durable in one of the two; ``replay_forever()`` (a task of the web
process) moves spooled events into Redis, oldest first, as soon as Redis answers again. Replaying goes through
the same deduplicating script, so an event spooled twice, or spooled and also redelivered by Rocket.Chat, is
still logged once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from bridge import keys
from bridge.eventlog import EventLog, GroupCommit
from bridge.events import Event, event_from_dict
from bridge.jobqueue import job_for
from bridge.spool import Spool

log = logging.getLogger("bridge.intake")

REPLAY_PERIOD = 1.0
REPLAY_GROUP = 100
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class Recorded:
    outcome: str  # "accepted" | "duplicate" | "ignored"
    event_id: str | None = None  # ``ev-<identity>``: the same for every delivery of one event, in logs and answers
    spooled: bool = False


class Intake:
    def __init__(self, events: EventLog, spool: Spool) -> None:
        self.events = events
        self.group = GroupCommit(events)
        self.spool = spool

    async def record(self, event: Event) -> Recorded:
        """Durable in Redis or in the spool, or ``OSError`` (then nobody has it: answer 503)."""
        if job_for(event) is None:
            return Recorded("ignored")
        identity = event.identity
        event_id = keys.event_job_id(identity)
        if not self.spool.backlog:
            try:
                new = await self.group.append(event, identity)
                return Recorded("accepted" if new else "duplicate", event_id)
            except REDIS_ERRORS as error:
                log.error("Redis unavailable (%s): spooling", type(error).__name__, extra={"room_id": event.room_id})
        await run_in_threadpool(self.spool.append, event.to_dict())
        return Recorded("accepted", event_id, spooled=True)

    async def replay(self) -> int:
        """Move every claimable spool file into Redis; returns the events replayed. Stops at the first failure."""
        replayed = 0
        paths = await run_in_threadpool(self.spool.claim)
        try:
            for path in paths:
                entries = [event_from_dict(entry) for entry in self.spool.entries(path)]
                for start in range(0, len(entries), REPLAY_GROUP):
                    replayed += sum(await self.events.append(entries[start : start + REPLAY_GROUP]))
                self.spool.finish(path)
                log.warning("spool %s replayed into Redis", path.name)
        finally:
            for path in paths:
                self.spool.release(path)  # unfinished files stay on disk, claimable again next period
        return replayed

    async def replay_forever(self) -> None:
        while True:
            await asyncio.sleep(REPLAY_PERIOD)
            if not self.spool.backlog and not await run_in_threadpool(self._foreign_files):
                continue
            try:
                await self.replay()
            except REDIS_ERRORS:
                continue  # still down: try again next period
            except Exception:
                log.exception("spool replay failed")

    def _foreign_files(self) -> bool:
        """Files left by a web process that died (only checked when this process has no backlog of its own)."""
        return self.spool.directory.exists() and any(self.spool.directory.glob("*.jsonl"))
