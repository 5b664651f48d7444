"""Correcting drift between the bridge's load book and Rocket.Chat's open rooms.

Webhooks can be lost (Rocket.Chat gives up after 5 attempts) and rooms can change while the bridge is down, so
every ``LOAD_RECONCILE_SECONDS`` a worker asks Rocket.Chat for each known agent's open rooms
(``livechat/rooms?agents[]=<id>&open=true``) and makes the load book agree: rooms Rocket.Chat shows are counted on
their agent, rooms it no longer shows are released.
"""

from __future__ import annotations

import logging

from bridge import endpoints
from bridge.directory import AgentDirectory
from bridge.errors import RocketChatError
from bridge.load import LoadBook
from bridge.rocketchat import RocketChat

log = logging.getLogger("bridge.reconcile")


def reconcile_load(rc: RocketChat, directory: AgentDirectory, load: LoadBook) -> str:
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
        for room_id in known - actual:
            released += load.release(room_id, agent_id)
    if added or released:
        log.warning("load drift corrected: %d rooms added, %d released", added, released)
    return f"load checked for {len(agent_ids)} agents: {added} rooms added, {released} released"
