"""Routing a voice extension: pick an available agent and associate the extension with them (Rocket.Chat 7.x).

``agents/available?includeExtension=X`` lists the agents without an extension plus the one who holds X; the
choice is the chat strategy's (presence, department, capacity, fairness). If the holder of X is still the best
candidate nothing changes; otherwise X is removed from its holder and assigned to the winner
(``POST omnichannel/agent/extension`` refuses an extension in use). A call does not count against chat capacity.
Omnichannel VoIP was removed in Rocket.Chat 8.0, so on 8.x the outcome is a clear failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from bridge import endpoints
from bridge.decisions import DecisionLog
from bridge.directory import AgentDirectory
from bridge.errors import NotFound, RocketChatError
from bridge.load import LoadBook
from bridge.rocketchat import RocketChat
from bridge.routing import Policy, Request, choose

log = logging.getLogger("bridge.voice")


def voice_job_id(request_id: str) -> str:
    """The RQ job id of a voice request (RQ's own namespace: its decisions are keyed ``voice`` and the request id)."""
    return f"voice-{request_id}"


def route_extension(
    request_id: str,
    extension: str,
    department_id: str | None,
    directory: AgentDirectory,
    rocketchat: Callable[[], RocketChat],
    load: LoadBook,
    decisions: DecisionLog,
    policy: Policy,
) -> str:
    record_id = request_id
    decision: dict[str, Any] = {"kind": "voice", "extension": extension, "department_id": department_id}
    try:
        if directory.source() != "available":
            raise NotFound("agents/available is not in use", route="GET /api/v1/omnichannel/agents/available")
        listing = directory.agents(extension=extension)
    except NotFound:
        decisions.record(
            "voice",
            record_id,
            {
                **decision,
                "outcome": "failed",
                "detail": "voice extensions need Rocket.Chat 7.x (omnichannel VoIP was removed "
                "in 8.0) and AGENT_SOURCE auto or available",
            },
        )
        return "voice routing unavailable: omnichannel VoIP needs Rocket.Chat 7.x"
    holder = next((agent for agent in listing.agents if agent.extension == extension), None)
    choice = choose(listing.agents, load.counts(), load.last_assigned(), Request(department_id), policy, time.time())
    decision |= {
        "strategy": choice.strategy,
        "candidates": [c.to_dict() for c in choice.candidates],
        "previous_holder": holder.username if holder else None,
    }
    if not choice.ranked:
        decisions.record(
            "voice", record_id, {**decision, "outcome": "no agent", "detail": "no available agent can take it"}
        )
        return f"extension {extension}: no available agent"
    winner = choice.ranked[0]
    if holder is not None and holder.id == winner.id:
        decisions.record(
            "voice",
            record_id,
            {
                **decision,
                "outcome": "kept",
                "agent_id": winner.id,
                "agent_username": winner.username,
                "detail": "the holder is still the best",
            },
        )
        return f"extension {extension} stays with {winner.username}"
    rc = rocketchat()
    try:
        if holder is not None:
            endpoints.remove_extension(rc, holder.username)
        endpoints.assign_extension(rc, winner.username, extension)
    except RocketChatError as error:
        decisions.record(
            "voice", record_id, {**decision, "outcome": "failed", "agent_id": winner.id, "detail": str(error)}
        )
        raise
    directory.cache.invalidate(f"agents:{directory.source()}:{extension}")
    decisions.record(
        "voice",
        record_id,
        {
            **decision,
            "outcome": "assigned",
            "agent_id": winner.id,
            "agent_username": winner.username,
            "detail": f"moved from {holder.username}" if holder else "was free",
        },
    )
    return f"extension {extension} assigned to {winner.username}"
