"""Re-routing a served chat to another agent with ``POST livechat/room.forward`` (``roomId`` + ``userId``).

Used when the serving agent must be replaced (they did not answer, went offline). The room's count moves to the
new agent in the same atomic step that checks their capacity; if Rocket.Chat refuses, it moves back. Agents who
already had the chat are excluded; with nobody left, the chat can go to a fallback department instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bridge import endpoints
from bridge.errors import RateLimited, RequestRejected, RocketChatError
from bridge.lease import Lease
from bridge.router import DEFERRED, MAX_TAKE_ATTEMPTS, OFFLINE_ERRORS, Router
from bridge.routing import Request, choose

CLOSED_ERRORS = frozenset({"This_conversation_is_already_closed", "error-invalid-room"})


@dataclass(frozen=True, slots=True)
class Rerouted:
    outcome: str  # forwarded | forwarded to department | not forwarded | closed | deferred
    agent_id: str | None
    text: str


def reroute(
    router: Router,
    room_id: str,
    department_id: str | None,
    excluded: Iterable[str],
    reason: str,
    claim: Lease,
    fallback_department: str | None = None,
) -> Rerouted:
    """Forward the room to the best other agent. ``claim`` is the room's lease, held by the caller: the forward is
    sent only while it is still the caller's (a fenced write records it as in flight first)."""
    rc = router.rocketchat()
    current = router.load.agent_of(room_id)
    excluded_ids = set(excluded) | ({current} if current else set())
    listing = router.directory.agents()
    attempts: list[dict[str, Any]] = []
    decision: dict[str, Any] = {
        "kind": "reroute",
        "reason": reason,
        "department_id": department_id,
        "previous_agent_id": current,
    }
    choice = None
    for _ in range(MAX_TAKE_ATTEMPTS):
        request = Request(department_id, excluded=frozenset(excluded_ids), unavailable=router.unavailable(listing))
        choice = choose(
            listing.agents,
            router.load.counts(),
            router.load.last_assigned(),
            request,
            router.policy(department_id),
            router.clock(),
        )
        if not choice.ranked:
            break
        reservation = router.load.reserve_move(room_id, [(c.id, c.capacity) for c in choice.ranked])
        if reservation.outcome == "closed":
            return _record(router, room_id, decision, choice, attempts, "closed", "the room was closed")
        if reservation.outcome != "reserved" or reservation.agent_id is None:
            break
        agent_id = reservation.agent_id
        with router.sending(claim, room_id, agent_id) as sent:
            if not sent:
                _undo(router, room_id, agent_id, reservation.previous_id)
                router.defer(1.0)
                return Rerouted(DEFERRED, None, f"room {room_id}: lease lost before the forward; not sent")
            try:
                endpoints.forward_room(rc, room_id, user_id=agent_id)
            except RateLimited as error:
                _undo(router, room_id, agent_id, reservation.previous_id)
                router.defer(error.retry_after)
                return Rerouted(DEFERRED, None, f"room {room_id}: forward deferred ({error})")
            except RequestRejected as error:
                _undo(router, room_id, agent_id, reservation.previous_id)
                code = error.error_type or ""
                if code in CLOSED_ERRORS:
                    return _record(router, room_id, decision, choice, attempts, "closed", str(error))
                if code in OFFLINE_ERRORS:
                    router.mark_unavailable(agent_id)
                attempts.append({"agent_id": agent_id, "result": "offline" if code in OFFLINE_ERRORS else code})
                excluded_ids.add(agent_id)
                continue
            except RocketChatError as error:
                _undo(router, room_id, agent_id, reservation.previous_id)
                _record(router, room_id, decision, choice, attempts, "failed", str(error))
                raise
        attempts.append({"agent_id": agent_id, "result": "forwarded"})
        return _record(router, room_id, decision, choice, attempts, "forwarded", f"forwarded: {reason}", agent_id)
    if fallback_department:
        endpoints.forward_room(rc, room_id, department_id=fallback_department)
        return _record(
            router,
            room_id,
            decision,
            choice,
            attempts,
            "forwarded to department",
            f"nobody left to try; forwarded to department {fallback_department}",
        )
    return _record(router, room_id, decision, choice, attempts, "not forwarded", "no other agent can take it now")


def _undo(router: Router, room_id: str, agent_id: str, previous_id: str | None) -> None:
    if previous_id:
        router.load.assign(room_id, previous_id)
    else:
        router.load.release(room_id, agent_id)


def _record(
    router: Router,
    room_id: str,
    decision: dict[str, Any],
    choice: Any,
    attempts: list[dict[str, Any]],
    outcome: str,
    detail: str,
    agent_id: str | None = None,
) -> Rerouted:
    entry = {**decision, "outcome": outcome, "detail": detail, "agent_id": agent_id, "attempts": attempts}
    if choice is not None:
        entry["strategy"] = choice.strategy
        entry["candidates"] = [c.to_dict() for c in choice.candidates]
        entry["agent_username"] = {c.id: c.username for c in choice.candidates}.get(agent_id or "")
    router.decisions.record("chat", room_id, entry)
    return Rerouted(outcome, agent_id, f"room {room_id}: {outcome} ({detail})")
