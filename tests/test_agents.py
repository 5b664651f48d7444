import pytest

from bridge.agents import Agent, normalise_agent, parse_max_chats, presence_problem


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (5, 5),
        ("5", 5),
        (" 3 ", 3),
        (0, 0),
        ("0", 0),
        (2.0, 2),
        ("", None),
        (None, None),
        ("five", None),
        (-1, None),
        (True, None),
        ([], None),
    ],
)
def test_max_chats_arrives_as_number_string_or_nothing(raw, expected):
    assert parse_max_chats(raw) == expected


def test_a_whole_user_document_becomes_a_small_agent():
    raw = {
        "_id": "a1",
        "username": "ana",
        "name": "Ana",
        "status": "online",
        "statusLivechat": "available",
        "livechat": {"maxNumberSimultaneousChat": "4"},
        "extension": "2001",
        "lastRoutingTime": "2026-11-24T10:00:00Z",
        "emails": [{"address": "ana@example.com"}],
        "services": {"password": {"bcrypt": "x"}},
        "roles": ["livechat-agent"],
    }
    agent = normalise_agent(raw)
    assert agent == Agent(
        id="a1",
        username="ana",
        name="Ana",
        status="online",
        status_livechat="available",
        max_chats=4,
        extension="2001",
        last_routing_time="2026-11-24T10:00:00Z",
    )
    assert "ana@example.com" not in repr(agent.to_dict())
    assert Agent.from_dict(agent.to_dict()) == agent


def test_missing_optional_fields_are_fine_and_unusable_documents_are_dropped():
    assert normalise_agent({"_id": "a2", "username": "bo"}) == Agent(id="a2", username="bo")
    assert normalise_agent({"_id": "a3"}) is None
    assert normalise_agent({"username": "x"}) is None
    assert normalise_agent("not a document") is None


def test_departments_listed_by_livechat_users_agent_are_kept():
    raw = {"_id": "a4", "username": "cy", "departments": [{"departmentId": "d1"}, {"departmentId": "d2"}, {"x": 1}]}
    assert normalise_agent(raw).departments == ("d1", "d2")


@pytest.mark.parametrize(
    ("status", "livechat", "accept_idle", "problem"),
    [
        ("online", "available", False, None),
        ("busy", "available", False, None),
        ("away", "available", False, "away (idle agents are not accepted)"),
        ("away", "available", True, None),
        ("offline", "available", True, "offline"),
        (None, "available", True, "offline"),
        ("online", "not-available", True, "not available for livechat"),
        ("online", None, True, "not available for livechat"),
    ],
)
def test_presence(status, livechat, accept_idle, problem):
    agent = Agent(id="a", username="a", status=status, status_livechat=livechat)
    assert presence_problem(agent, accept_idle) == problem
