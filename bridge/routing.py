"""Choosing an agent: pure functions over plain data (no I/O; ``now`` and the load are passed in).

``choose()`` explains itself: every agent of the directory appears once, either as an eligible candidate (in the
order the strategy ranks them) or with the reason they were excluded. The atomic reservation (``reservations``)
then takes the first ranked candidate who still has room at that instant, so concurrent routers never push an
agent past capacity even when their snapshots of the load differ.

Strategies (``ROUTING_STRATEGY``, per department with ``ROUTING_STRATEGY_BY_DEPARTMENT``):
- ``least_loaded`` (default): fewest open chats; ties go to whoever waited longest since their last assignment.
- ``load_rotation``: longest since the last assignment, whatever the load (Rocket.Chat EE's Load Rotation).
- ``previous_agent``: a returning visitor's previous agent first, if they write again within
  ``PREVIOUS_AGENT_WINDOW_SECONDS`` and that agent can take the chat; otherwise least loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.agents import Agent, presence_problem
from bridge.settings import STRATEGIES  # noqa: F401 - re-exported: the strategies live with the settings


@dataclass(frozen=True, slots=True)
class Policy:
    strategy: str = "least_loaded"
    default_max_chats: int = 3
    accept_idle: bool = False
    previous_agent_window: float = 86_400.0


@dataclass(frozen=True, slots=True)
class Request:
    department_id: str | None = None
    excluded: frozenset[str] = frozenset()  # agents that already failed this chat (offline, did not answer, ...)
    unavailable: frozenset[str] = frozenset()  # agents Rocket.Chat just said are offline (before the directory knows)
    previous_agent_id: str | None = None
    previous_at: float | None = None  # when the previous agent served this visitor (epoch seconds)


@dataclass(frozen=True, slots=True)
class Candidate:
    id: str
    username: str
    load: int
    capacity: int  # 0 = no limit
    last_assigned: float  # epoch seconds, 0 if never
    excluded: str | None = None  # why not, or None if eligible

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "username": self.username,
            "load": self.load,
            "capacity": self.capacity,
            "last_assigned": self.last_assigned or None,
            "excluded": self.excluded,
        }


@dataclass(frozen=True, slots=True)
class Choice:
    strategy: str
    ranked: list[Candidate]  # eligible, best first
    excluded: list[Candidate] = field(default_factory=list)

    @property
    def candidates(self) -> list[Candidate]:
        return self.ranked + self.excluded


def capacity_of(agent: Agent, default_max_chats: int) -> int:
    """``maxNumberSimultaneousChat`` when set (0 = no limit, as in Rocket.Chat), else the configured default."""
    return agent.max_chats if agent.max_chats is not None else default_max_chats


def exclusion(agent: Agent, load: int, request: Request, policy: Policy) -> str | None:
    if agent.id in request.excluded:
        return "excluded after a failed attempt"
    if agent.id in request.unavailable:
        return "offline (Rocket.Chat refused them moments ago)"
    problem = presence_problem(agent, policy.accept_idle)
    if problem is not None:
        return problem
    if request.department_id is not None and request.department_id not in agent.departments:
        return "not in the department"
    capacity = capacity_of(agent, policy.default_max_chats)
    if capacity and load >= capacity:
        return f"at capacity ({load}/{capacity})"
    return None


def choose(
    agents: Iterable[Agent],
    load: Mapping[str, int],
    last_assigned: Mapping[str, float],
    request: Request,
    policy: Policy,
    now: float,
) -> Choice:
    eligible: list[Candidate] = []
    excluded: list[Candidate] = []
    for agent in agents:
        current = load.get(agent.id, 0)
        candidate = Candidate(
            id=agent.id,
            username=agent.username,
            load=current,
            capacity=capacity_of(agent, policy.default_max_chats),
            last_assigned=last_assigned.get(agent.id, 0.0),
            excluded=exclusion(agent, current, request, policy),
        )
        (excluded if candidate.excluded else eligible).append(candidate)
    return Choice(policy.strategy, rank(eligible, request, policy, now), sorted(excluded, key=lambda c: c.username))


def rank(candidates: list[Candidate], request: Request, policy: Policy, now: float) -> list[Candidate]:
    def rotation(c: Candidate) -> tuple[float, str]:
        return (c.last_assigned, c.username)

    def least_loaded(c: Candidate) -> tuple[int, float, str]:
        return (c.load, c.last_assigned, c.username)

    if policy.strategy == "load_rotation":
        ordered = sorted(candidates, key=rotation)
    else:
        ordered = sorted(candidates, key=least_loaded)
    if policy.strategy == "previous_agent" and returning_within_window(request, policy, now):
        ordered.sort(key=lambda c: c.id != request.previous_agent_id)  # stable: the rest keep their order
    return ordered


def returning_within_window(request: Request, policy: Policy, now: float) -> bool:
    return (
        request.previous_agent_id is not None
        and request.previous_at is not None
        and now - request.previous_at <= policy.previous_agent_window
    )
