"""Correcting drift between the bridge's load book and Rocket.Chat's open rooms.

Webhooks can be lost (Rocket.Chat gives up after 5 attempts) and rooms can change while the bridge is down, so
every ``LOAD_RECONCILE_SECONDS`` a worker asks Rocket.Chat for every open room and its agent
(``livechat/rooms?open=true``, one call per 100 rooms) and makes the load book agree: rooms Rocket.Chat shows
are counted on their agent, rooms it no longer shows are released, except rooms being routed right now or
counted less than ``GRACE_SECONDS`` ago (a reservation exists before Rocket.Chat lists the room: releasing it
would let a second router take the same slot).
"""

from __future__ import annotations

import logging

from bridge import endpoints, keys
from bridge.errors import PermissionDenied
from bridge.load import LoadBook
from bridge.rocketchat import RocketChat
from bridge.router import Router, epoch
from bridge.waiting import ADDED, NO_PRIORITY, WaitingChat

log = logging.getLogger("bridge.reconcile")

GRACE_SECONDS = 120.0  # longer than any take or forward round trip, retries included


def _redis_now(load: LoadBook) -> float:
    seconds, micros = load.connection.time()
    return int(seconds) + int(micros) / 1e6


def reconcile_load(rc: RocketChat, load: LoadBook, grace_seconds: float = GRACE_SECONDS) -> str:
    actual = endpoints.open_rooms(rc)  # room -> agent, for every open room Rocket.Chat has
    by_agent: dict[str, set[str]] = {}
    for room_id, agent_id in actual.items():
        by_agent.setdefault(agent_id, set()).add(room_id)
    agent_ids = set(load.counts()) | set(by_agent)
    added = released = 0
    now = _redis_now(load)
    for agent_id in sorted(agent_ids):
        shown, known = by_agent.get(agent_id, set()), load.rooms_of(agent_id)
        for room_id in shown - known:
            load.assign(room_id, agent_id)
            added += 1
        for room_id in known - shown:
            # A room being routed right now is reserved before Rocket.Chat lists it: not drift.
            since = load.counted_since(room_id)
            if load.connection.exists(keys.lease(keys.room_lease(room_id))) or (since and now - since < grace_seconds):
                continue
            released += load.release(room_id, agent_id)
    if added or released:
        log.warning("load drift corrected: %d rooms added, %d released", added, released)
    return f"load checked: {len(actual)} open rooms, {len(agent_ids)} agents: {added} rooms added, {released} released"


YOUNG_SECONDS = 10.0


def recover_queued(rc: RocketChat, router: Router) -> str:
    """Route queued inquiries the bridge does not know of: the safety net for lost ``LivechatSessionQueued`` webhooks.

    ``livechat/inquiries.list`` (view-livechat-manager) lists every queued inquiry; without that permission
    ``inquiries.queuedForUser`` lists those of the account's departments.
    """
    try:
        inquiries = endpoints.queued_inquiries(rc)
    except PermissionDenied:
        inquiries = endpoints.queued_inquiries_for_user(rc)
    recovered = 0
    for inquiry in inquiries:
        room_id, inquiry_id = inquiry.get("rid"), inquiry.get("_id")
        if not isinstance(room_id, str) or not isinstance(inquiry_id, str):
            continue
        if inquiry.get("status") not in (None, "queued", "ready"):
            continue
        if router.waiting.get(room_id) is not None or router.load.agent_of(room_id) is not None:
            continue
        department = inquiry.get("department") if isinstance(inquiry.get("department"), str) else None
        chat = WaitingChat(
            room_id=room_id,
            department_id=department,
            queued_at=epoch(inquiry.get("ts")) or router.clock(),
            inquiry_id=inquiry_id,
            priority=_priority(inquiry.get("priorityWeight")),
        )
        if router.admit(chat) == ADDED:  # FULL: logged and counted by the router; the next pass tries again
            recovered += 1
            # A chat queued moments ago is usually one whose webhook is still on its way (or in the event log).
            young = router.clock() - chat.queued_at < YOUNG_SECONDS
            log.log(
                logging.INFO if young else logging.WARNING,
                "queued inquiry %s was unknown to the bridge (%s): routing it",
                inquiry_id,
                "queued moments ago, its webhook is probably on its way" if young else "webhook lost?",
                extra={"room_id": room_id},
            )
    outcome = router.drain() if recovered else "nothing to recover"
    return f"{len(inquiries)} queued in Rocket.Chat, {recovered} recovered; {outcome}"


def _priority(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else NO_PRIORITY
