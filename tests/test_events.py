import json

import pytest

from bridge.errors import InvalidEvent
from bridge.events import (
    PARSERS,
    ChatClosed,
    ChatForwarded,
    ChatQueued,
    ChatStarted,
    ChatTaken,
    Event,
    LeadCaptured,
    MessageSent,
    OfflineMessage,
    RoomEdited,
    UnknownEvent,
    event_from_dict,
    parse_event,
)
from tests.support import fixture_names, load_fixture

EXPECTED_CLASS = {
    "LivechatSessionStart": ChatStarted,
    "LivechatSessionQueued": ChatQueued,
    "LivechatSessionTaken": ChatTaken,
    "LivechatSessionForwarded": ChatForwarded,
    "LivechatSession": ChatClosed,
    "LivechatEdit": RoomEdited,
    "Message": MessageSent,
    "LeadCapture": LeadCaptured,
    "LivechatOfflineMessage": OfflineMessage,
}


def test_every_supported_type_has_a_fixture():
    assert {name.split("__")[0] for name in fixture_names()} == set(PARSERS)


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_parses_to_its_typed_event(name):
    payload = load_fixture(name)
    event = parse_event(payload)
    assert isinstance(event, EXPECTED_CLASS[payload["type"]])
    assert event.room_id == payload.get("_id", "")
    assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


@pytest.mark.parametrize("name", fixture_names())
def test_no_visitor_personal_data_survives_parsing(name):
    payload = load_fixture(name)
    kept = json.dumps(parse_event(payload).to_dict())
    visitor = payload.get("visitor") or {}
    personal = [visitor.get("name"), visitor.get("ip"), visitor.get("token"), payload.get("message")]
    personal += [m.get("msg") for m in payload.get("messages", [])]
    emails = visitor.get("email")
    personal += [e["address"] for e in emails] if isinstance(emails, list) else [emails]
    for value in filter(None, personal):
        assert value not in kept


def test_taken_keeps_the_agent_and_when_it_was_assigned():
    payload = load_fixture("LivechatSessionTaken__basic")
    event = parse_event(payload)
    assert event.agent.id == payload["servedBy"]["_id"]
    assert event.agent.username == payload["servedBy"]["username"]
    assert event.served_at == payload["servedBy"]["ts"]
    assert event.department_id == payload["departmentId"]


def test_forwarded_keeps_where_it_came_from():
    to_agent = parse_event(load_fixture("LivechatSessionForwarded__to_agent"))
    assert to_agent.old_agent is not None and to_agent.old_agent.id != to_agent.agent.id
    to_department = parse_event(load_fixture("LivechatSessionForwarded__to_department"))
    assert to_department.old_department_id is not None


def test_messages_tell_agent_from_visitor():
    assert parse_event(load_fixture("Message__from_agent")).from_agent
    assert not parse_event(load_fixture("Message__from_visitor")).from_agent


def test_the_admin_test_call_is_recognised():
    assert parse_event(load_fixture("LivechatSession__admin_test")).is_test
    assert not parse_event(load_fixture("LivechatSession__closed_by_agent")).is_test


def test_a_redelivery_has_the_same_identity():
    payload = load_fixture("LivechatSessionQueued__basic")
    assert parse_event(payload).identity == parse_event(json.loads(json.dumps(payload))).identity


def test_a_new_occurrence_has_a_new_identity():
    taken = load_fixture("LivechatSessionTaken__basic")
    again = json.loads(json.dumps(taken))
    again["servedBy"]["ts"] = "2026-11-24T11:00:00.000Z"
    assert parse_event(taken).identity != parse_event(again).identity

    queued = load_fixture("LivechatSessionQueued__basic")
    requeued = dict(queued, crmData='{"ok":true,"outcome":"accepted"}')
    assert parse_event(queued).identity != parse_event(requeued).identity

    message = load_fixture("Message__from_visitor")
    other = json.loads(json.dumps(message))
    other["messages"][0]["_id"] = "OtherMessageId123"
    assert parse_event(message).identity != parse_event(other).identity


def test_identity_ignores_the_history_a_payload_carries():
    closed = load_fixture("LivechatSession__closed_by_agent")
    assert parse_event(closed).identity == parse_event(dict(closed, messages=[])).identity


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([1, 2], None),
        ({}, "type"),
        ({"type": 7}, "type"),
        ({"type": "LivechatSessionQueued", "visitor": {"_id": "v"}}, "_id"),
        ({"type": "LivechatSessionQueued", "_id": "", "visitor": {"_id": "v"}}, "_id"),
        ({"type": "LivechatSessionQueued", "_id": 5, "visitor": {"_id": "v"}}, "_id"),
        ({"type": "LivechatSessionQueued", "_id": "r"}, "visitor"),
        ({"type": "LivechatSessionQueued", "_id": "r", "visitor": "v"}, "visitor"),
        ({"type": "LivechatSessionQueued", "_id": "r", "visitor": {}}, "visitor._id"),
        ({"type": "LivechatSessionTaken", "_id": "r"}, "servedBy"),
        ({"type": "LivechatSessionTaken", "_id": "r", "servedBy": {"username": "a"}}, "servedBy._id"),
        ({"type": "Message", "_id": "r", "messages": []}, "messages"),
        ({"type": "Message", "_id": "r", "messages": "hi"}, "messages"),
        ({"type": "Message", "_id": "r", "messages": [{"msg": "hi"}]}, "messages.0._id"),
    ],
)
def test_malformed_payloads_name_the_field(payload, field):
    with pytest.raises(InvalidEvent) as raised:
        parse_event(payload)
    assert raised.value.field == field
    if field:
        assert f"'{field}'" in str(raised.value)


def test_an_unknown_type_is_well_formed_but_unknown_and_its_fields_are_not_read():
    # LivechatLead is not a type Rocket.Chat sends (the lead event is LeadCapture); a newer server may add others.
    unknown = parse_event({"type": "LivechatLead", "_id": 5})
    assert unknown == UnknownEvent("LivechatLead")
    assert unknown.shown == "LivechatLead"
    assert not isinstance(unknown, Event), "it cannot reach the event log or a job"


@pytest.mark.parametrize(
    ("event_type", "shown"),
    [
        ("LivechatSessionOnHold", "LivechatSessionOnHold"),
        ("A" * 64, "A" * 64),
        ("A" * 65, "A" * 64 + "..."),
        ("On\nHold\x1b[31m", "On\\nHold\\x1b[31m"),
        ("\u202eEvil", "\\u202eEvil"),
        ("\x00" * 64, "\\x00" * 16 + "..."),
        ("caf\u00e9 \u4e2d", "caf\u00e9 \u4e2d"),
    ],
)
def test_an_unknown_type_is_shown_capped_and_escaped(event_type, shown):
    assert parse_event({"type": event_type}).shown == shown


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({"_id": "r"}, "'type' is required"),
        ({"type": None}, "'type' is required"),
        ({"type": 5}, "'type' must be a string"),
        ({"type": ["LivechatSession"]}, "'type' must be a string"),
        ({"type": ""}, "'type' must not be empty"),
        ({"type": "Future\ud800"}, "'type' is not valid Unicode"),
    ],
)
def test_a_missing_or_malformed_type_is_invalid(payload, says):
    with pytest.raises(InvalidEvent) as raised:
        parse_event(payload)
    assert raised.value.field == "type"
    assert says in str(raised.value)
