"""Correcting drift between the bridge's load book and Rocket.Chat's open rooms.

Webhooks can be lost (Rocket.Chat gives up after 5 attempts) and rooms can change while the bridge is down, so
every ``LOAD_RECONCILE_SECONDS`` a worker asks Rocket.Chat for each known agent's open rooms
(``livechat/rooms?agents[]=<id>&open=true``) and makes the load book agree: rooms Rocket.Chat shows are counted on
their agent, rooms it no longer shows are released, except rooms being routed right now or counted less than
``GRACE_SECONDS`` ago (a reservation exists before Rocket.Chat lists the room: releasing it would let a second
router take the same slot).
"""

from __future__ import annotations

import logging

from bridge import endpoints, keys
from bridge.directory import AgentDirectory
from bridge.errors import RocketChatError
from bridge.load import LoadBook
from bridge.rocketchat import RocketChat

log = logging.getLogger("bridge.reconcile")

GRACE_SECONDS = 120.0  # longer than any take or forward round trip, retries included


def _redis_now(load: LoadBook) -> float:
    seconds, micros = load.connection.time()
    return int(seconds) + int(micros) / 1e6


def reconcile_load(
    rc: RocketChat, directory: AgentDirectory, load: LoadBook, grace_seconds: float = GRACE_SECONDS
) -> str:
    agent_ids = set(load.counts()) | {agent.id for agent in directory.agents().agents}
    added = released = 0
    for agent_id in sorted(agent_ids):
        try:
            actual = endpoints.open_rooms_of(rc, agent_id)
        except RocketChatError as error:
            log.warning("load check for %s skipped: %s", agent_id, error, extra={"agent_id": agent_id})
            continue
        known = load.rooms_of(agent_id)
        for room_id in actual - known:
            load.assign(room_id, agent_id)
            added += 1
        now = _redis_now(load)
        for room_id in known - actual:
            # A room being routed right now is reserved before Rocket.Chat lists it: not drift.
            since = load.counted_since(room_id)
            if load.connection.exists(keys.routing_claim(room_id)) or (since and now - since < grace_seconds):
                continue
            released += load.release(room_id, agent_id)
    if added or released:
        log.warning("load drift corrected: %d rooms added, %d released", added, released)
    return f"load checked for {len(agent_ids)} agents: {added} rooms added, {released} released"
