"""Making an accepted webhook durable: into Redis's event log, or into the local spool while Redis cannot take it.

``record()`` answers only once the event is durable in one of the two; ``replay_forever()`` (a task of the web
process) moves spooled events into Redis, oldest first, as soon as Redis answers again. Replaying goes through
the same deduplicating script, so an event spooled twice, or spooled and also redelivered by Rocket.Chat, is
still logged once.

An event whose lane of the event log is at its bound (``EVENT_LOG_*_MAX_LINES``) is not spooled: ``record()`` raises
``LogFull`` and the webhook is answered 503, so Rocket.Chat retries it. The spool is for Redis being unreachable; it
is local to one web process and its disk, so spilling a flood into it would only move the unbounded state there.
A spooled event met by a full lane while being replayed stays in its spool file until there is room.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from bridge import keys
from bridge.bounds import Refusals
from bridge.eventlog import Appended, EventLog, GroupCommit, LogFull, lane_of
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
        self.refusals = Refusals(log)

    async def record(self, event: Event) -> Recorded:
        """Durable in Redis or in the spool; or ``LogFull`` (its lane of the event log is at its bound) or
        ``OSError`` (Redis and the spool both failed): then nothing was recorded, answer 503."""
        if job_for(event) is None:
            return Recorded("ignored")
        identity = event.identity
        event_id = keys.event_job_id(identity)
        if not self.spool.backlog:
            try:
                appended = await self.group.append(event, identity)
            except REDIS_ERRORS as error:
                log.error("Redis unavailable (%s): spooling", type(error).__name__, extra={"room_id": event.room_id})
            else:
                if appended is Appended.FULL:
                    self._refused(lane_of(event))
                return Recorded("accepted" if appended is Appended.ACCEPTED else "duplicate", event_id)
        await run_in_threadpool(self.spool.append, event.to_dict())
        return Recorded("accepted", event_id, spooled=True)

    def _refused(self, lane: str) -> None:
        limit = self.events.limit(lane)
        self.refusals.note(
            lane,
            f"the event log's {lane} lane is at its bound (EVENT_LOG_{lane.upper()}_MAX_LINES={limit}): webhooks "
            "answered 503, nothing recorded for them; Rocket.Chat retries them",
            status=503,
        )
        raise LogFull(lane, limit)

    async def replay(self) -> int:
        """Move every claimable spool file into Redis; returns the events replayed. Stops at the first failure."""
        replayed = 0
        paths = await run_in_threadpool(self.spool.claim)
        try:
            for path in paths:
                entries = [event_from_dict(entry) for entry in self.spool.entries(path)]
                for start in range(0, len(entries), REPLAY_GROUP):
                    group = entries[start : start + REPLAY_GROUP]
                    answers = await self.events.append(group)
                    replayed += answers.count(Appended.ACCEPTED)
                    if Appended.FULL in answers:  # the file stays; what was replayed is a duplicate next time
                        event = group[answers.index(Appended.FULL)]
                        log.warning(
                            "spool %s: replay paused, the event log's %s lane is at its bound",
                            path.name,
                            lane_of(event),
                        )
                        return replayed
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
