"""Re-routing chats whose agent does not answer (``NO_ANSWER_SECONDS``; 0 turns it off).

When an agent is given a chat (by the bridge, or a ``taken``/``forwarded`` webhook) a clock starts; the agent's
first message (an agent ``Message`` webhook) stops it. A chat still unanswered at its deadline is forwarded to the
next agent (``room.forward``), excluding everyone who already had it; after ``NO_ANSWER_MAX_ATTEMPTS`` forwards it
goes to ``NO_ANSWER_FALLBACK_DEPARTMENT`` if one is set. Every hop is a decision of the room.

A message can be processed before the ``taken`` event that precedes it (jobs run in parallel), so the last agent
who wrote is remembered for a while and a clock is not started for an agent who already answered.
"""

from __future__ import annotations

import json
import logging
import time

import redis

from bridge import keys
from bridge.errors import RateLimited
from bridge.settings import Settings

log = logging.getLogger("bridge.noanswer")

REPLIED_MEMORY_SECONDS = 3600


class AnswerWatch:
    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        self.settings = settings
        self.connection = connection

    @property
    def enabled(self) -> bool:
        return self.settings.no_answer_seconds > 0

    def start(self, room_id: str, agent_id: str, department_id: str | None) -> bool:
        """The agent now serves the room: start (or restart) their clock. Returns whether a clock runs."""
        if not self.enabled:
            return False
        replied = self.connection.get(keys.replied(room_id))
        if replied is not None and replied.decode() == agent_id:
            return False
        current = self.get(room_id)
        if current is not None and current["agent_id"] == agent_id:
            return True  # the same assignment seen twice (our take, then its webhook)
        tried = sorted(set(current["tried"]) | {current["agent_id"]}) if current else []
        attempts = current["attempts"] if current else 0
        state = {
            "agent_id": agent_id,
            "department_id": department_id,
            "since": time.time(),
            "attempts": attempts,
            "tried": tried,
        }
        pipe = self.connection.pipeline(transaction=True)
        pipe.set(keys.awaiting_room(room_id), json.dumps(state), ex=86_400)
        pipe.zadd(keys.awaiting(), {room_id: time.time() + self.settings.no_answer_seconds})
        pipe.execute()
        return True

    def forwarded(self, room_id: str) -> None:
        """The bridge forwarded the room for lack of an answer: count the attempt."""
        current = self.get(room_id)
        if current is not None:
            current["attempts"] += 1
            self.connection.set(keys.awaiting_room(room_id), json.dumps(current), ex=86_400)

    def replied(self, room_id: str, agent_id: str) -> None:
        self.replied_many([(room_id, agent_id)])

    def replied_many(self, replies: list[tuple[str, str]]) -> None:
        """Agents wrote in rooms (``(room, agent)``, in order): remember who wrote last, and stop the clock of each
        room whose awaited agent wrote. Two round trips for any number, so a batch of a message flood is applied at
        once and the routing lane is looked at again without delay (``workers.jobs.apply_log``)."""
        if not self.enabled or not replies:
            return  # nothing to stop, and no mark per agent message to keep (a flood of them would fill Redis)
        pipe = self.connection.pipeline(transaction=False)
        for room_id, agent_id in replies:
            pipe.set(keys.replied(room_id), agent_id, ex=REPLIED_MEMORY_SECONDS)
        for room_id, _ in replies:
            pipe.get(keys.awaiting_room(room_id))
        awaited = pipe.execute()[len(replies) :]
        answered = {
            room_id
            for (room_id, agent_id), raw in zip(replies, awaited, strict=True)
            if raw and json.loads(raw)["agent_id"] == agent_id
        }
        if answered:
            pipe = self.connection.pipeline(transaction=True)
            pipe.zrem(keys.awaiting(), *answered)
            pipe.delete(*(keys.awaiting_room(room_id) for room_id in answered))
            pipe.execute()

    def stop(self, room_id: str) -> None:
        pipe = self.connection.pipeline(transaction=True)
        pipe.zrem(keys.awaiting(), room_id)
        pipe.delete(keys.awaiting_room(room_id))
        pipe.execute()

    def get(self, room_id: str) -> dict | None:
        raw = self.connection.get(keys.awaiting_room(room_id))
        return json.loads(raw) if raw else None

    def due(self, now: float | None = None) -> list[str]:
        deadline = time.time() if now is None else now
        return [room.decode() for room in self.connection.zrangebyscore(keys.awaiting(), "-inf", deadline)]

    def postpone(self, room_id: str) -> None:
        """Nobody else could take it now: look again after another period."""
        self.connection.zadd(keys.awaiting(), {room_id: time.time() + self.settings.no_answer_seconds})


def reroute_unanswered(router: object, watch: AnswerWatch, now: float | None = None) -> str:
    """Forward every chat past its deadline (see the module docstring). Called by the periodic tick."""
    from bridge import endpoints
    from bridge.forwarding import reroute
    from bridge.router import Router

    assert isinstance(router, Router)
    settings = watch.settings
    handled = []
    for room_id in watch.due(now):
        claim = router.leases.acquire(keys.room_lease(room_id))
        if claim is None:
            continue
        try:
            if router.connection.exists(keys.take_in_flight(room_id)):
                continue  # a forward (or take) of an earlier holder may still be on its way
            state = watch.get(room_id)
            if state is None:
                watch.stop(room_id)
                continue
            reason = f"no answer from the agent within {settings.no_answer_seconds} s"
            department = state["department_id"]
            now_serving = router.load.agent_of(room_id)
            if now_serving is not None and now_serving != state["agent_id"]:
                # Already moved (a forward of ours that crashed before this record was updated, or a manual
                # transfer): never forward twice for one missed answer; the new agent gets a fresh clock.
                watch.start(room_id, now_serving, department)
                continue
            if state["attempts"] < settings.no_answer_max_attempts:
                excluded = {*state["tried"], state["agent_id"]}
                result = reroute(router, room_id, department, excluded, reason, claim)
                if result.outcome == "deferred":
                    continue  # still due: looked at again when the route's limit or the lease allows
                if result.outcome == "forwarded" and result.agent_id:
                    watch.start(room_id, result.agent_id, department)
                    watch.forwarded(room_id)
                    handled.append(result.outcome)
                    continue
                if result.outcome == "closed":
                    watch.stop(room_id)
                    continue
            if settings.no_answer_fallback_department:
                with router.sending(claim, room_id, "department") as sent:
                    if not sent:
                        continue
                    try:
                        rc = router.rocketchat()
                        endpoints.forward_room(rc, room_id, department_id=settings.no_answer_fallback_department)
                    except RateLimited as error:
                        router.defer(error.retry_after)
                        continue
                router.decisions.record(
                    "chat",
                    room_id,
                    {
                        "kind": "reroute",
                        "reason": reason,
                        "outcome": "forwarded to department",
                        "department_id": settings.no_answer_fallback_department,
                        "previous_agent_id": state["agent_id"],
                        "detail": f"after {state['attempts']} forwards without an answer",
                    },
                )
                watch.stop(room_id)
                handled.append("fallback")
            elif state["attempts"] >= settings.no_answer_max_attempts:
                router.decisions.record(
                    "chat",
                    room_id,
                    {
                        "kind": "reroute",
                        "reason": reason,
                        "outcome": "gave up",
                        "previous_agent_id": state["agent_id"],
                        "detail": f"{state['attempts']} forwards without an answer and no fallback department",
                    },
                )
                watch.stop(room_id)
                handled.append("gave up")
            else:
                watch.postpone(room_id)
        finally:
            router.leases.release(claim)
    return f"{len(handled)} unanswered chats handled" if handled else "no unanswered chats"
