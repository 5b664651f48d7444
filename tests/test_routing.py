"""Choosing an agent: pure functions, no Redis, no HTTP."""

import pytest

from bridge.agents import Agent
from bridge.routing import Policy, Request, capacity_of, choose

NOW = 1_000_000.0


def agent(name, status="online", livechat="available", max_chats=None, departments=("d1",)):
    return Agent(
        id=name,
        username=name,
        status=status,
        status_livechat=livechat,
        max_chats=max_chats,
        departments=tuple(departments),
    )


TEAM = [
    agent("ana", max_chats=2),
    agent("bo", max_chats=4),
    agent("cy", max_chats=3),
    agent("dee", status="offline", max_chats=5),
    agent("eve", livechat="not-available", max_chats=5),
    agent("fay", status="away", max_chats=5),
    agent("gus", max_chats=5, departments=("d2",)),
]


def ranked(choice):
    return [c.username for c in choice.ranked]


def test_least_loaded_first_ties_to_the_longest_since_last_assignment():
    load = {"ana": 1, "bo": 1, "cy": 2}
    last = {"ana": NOW - 10, "bo": NOW - 500}
    choice = choose(TEAM, load, last, Request("d1"), Policy(), NOW)
    assert ranked(choice) == ["bo", "ana", "cy"]


def test_never_assigned_counts_as_longest_waiting():
    choice = choose(TEAM, {}, {"ana": NOW - 5, "bo": NOW - 5}, Request("d1"), Policy(), NOW)
    assert ranked(choice)[0] == "cy"


def test_load_rotation_ignores_load():
    load = {"ana": 1, "bo": 0, "cy": 0}
    last = {"ana": NOW - 900, "bo": NOW - 10, "cy": NOW - 100}
    choice = choose(TEAM, load, last, Request("d1"), Policy(strategy="load_rotation"), NOW)
    assert ranked(choice) == ["ana", "cy", "bo"]


def test_every_agent_is_explained():
    choice = choose(TEAM, {"ana": 2}, {}, Request("d1", excluded=frozenset({"cy"})), Policy(), NOW)
    reasons = {c.username: c.excluded for c in choice.excluded}
    assert reasons == {
        "ana": "at capacity (2/2)",
        "cy": "excluded after a failed attempt",
        "dee": "offline",
        "eve": "not available for livechat",
        "fay": "away (idle agents are not accepted)",
        "gus": "not in the department",
    }
    assert ranked(choice) == ["bo"]
    assert len(choice.candidates) == len(TEAM)


def test_idle_agents_when_accepted():
    choice = choose(TEAM, {}, {}, Request("d1"), Policy(accept_idle=True), NOW)
    assert "fay" in ranked(choice)


def test_no_department_means_every_department():
    assert "gus" in ranked(choose(TEAM, {}, {}, Request(None), Policy(), NOW))


def test_agents_rocketchat_just_refused_are_skipped():
    choice = choose(TEAM, {}, {}, Request("d1", unavailable=frozenset({"bo"})), Policy(), NOW)
    assert "bo" not in ranked(choice)
    assert {c.username: c.excluded for c in choice.excluded}["bo"].startswith("offline")


@pytest.mark.parametrize(("max_chats", "default", "capacity"), [(None, 3, 3), (5, 3, 5), (0, 3, 0), (None, 0, 0)])
def test_capacity_uses_the_agents_own_limit_then_the_default(max_chats, default, capacity):
    assert capacity_of(agent("x", max_chats=max_chats), default) == capacity


def test_zero_capacity_means_no_limit():
    unlimited = [agent("zed", max_chats=0)]
    choice = choose(unlimited, {"zed": 500}, {}, Request("d1"), Policy(), NOW)
    assert ranked(choice) == ["zed"]


def test_the_previous_agent_comes_first_within_the_window():
    load = {"ana": 1, "cy": 1}
    policy = Policy(strategy="previous_agent", previous_agent_window=3600)
    back_soon = Request("d1", previous_agent_id="cy", previous_at=NOW - 60)
    assert ranked(choose(TEAM, load, {}, back_soon, policy, NOW)) == ["cy", "bo", "ana"]
    back_late = Request("d1", previous_agent_id="cy", previous_at=NOW - 7200)
    assert ranked(choose(TEAM, load, {}, back_late, policy, NOW)) == ["bo", "ana", "cy"]


def test_a_previous_agent_who_cannot_take_it_is_not_forced():
    policy = Policy(strategy="previous_agent")
    request = Request("d1", previous_agent_id="ana", previous_at=NOW - 60)
    choice = choose(TEAM, {"ana": 2}, {}, request, policy, NOW)
    assert "ana" not in ranked(choice)
