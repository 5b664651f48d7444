import importlib.util
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bridge.sandbox import payloads

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
T0 = datetime(2026, 11, 24, 10, 15, 30, 123000, tzinfo=UTC)

VISITOR: dict[str, Any] = {
    "_id": "Wq3ZkR8vLm2NbX7cT",
    "token": "yvxd3z2cn8g2e1h8ouq1h",
    "name": "Maria Schmidt",
    "username": "guest-1042",
    "visitorEmails": [{"address": "maria@example.com"}, {"address": "m@example.org"}],
    "phone": [{"phoneNumber": "+49 30 9018 2204"}],
}
AGENT: dict[str, Any] = {
    "_id": "Hx7nEqKfG2aPcT9bW",
    "username": "jonas.weber",
    "name": "Jonas Weber",
    "emails": [{"address": "jonas@example.com"}, {"address": "jw@example.org"}],
}
SERVED_BY = {"_id": AGENT["_id"], "username": AGENT["username"], "ts": T0}
ROOM: dict[str, Any] = {"_id": "Dk2LmQ7pXr9sVb4nE", "fname": "Maria Schmidt", "ts": T0, "departmentId": "D1"}


def message(message_id: str, sender: dict[str, Any], **extra: Any) -> dict[str, Any]:
    doc = {"_id": message_id, "rid": ROOM["_id"], "msg": "hi", "ts": T0, "_updatedAt": T0}
    doc["u"] = {"_id": sender["_id"], "username": sender["username"]}
    if sender is VISITOR:
        doc["token"] = VISITOR["token"]
    return {**doc, **extra}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_system_messages_are_dropped_except_the_closing_one() -> None:
    history = [
        message("m1", VISITOR),
        message("m2", AGENT, t="uj", msg="jonas.weber"),
        message("m3", AGENT, t="livechat_navigation_history", navigation={"page": {"title": "Pricing"}}),
        message("m4", AGENT, t="livechat-close", msg="Done"),
    ]
    room = {**ROOM, "servedBy": SERVED_BY}
    body = payloads.room_event("LivechatSession", room, VISITOR, AGENT, history)
    assert [item["_id"] for item in body["messages"]] == ["m1", "m4"]
    assert body["messages"][1]["closingMessage"] is True
    assert "closingMessage" not in body["messages"][0]


def test_navigation_messages_are_kept_when_both_settings_are_on() -> None:
    page = {"page": {"title": "Pricing"}}
    navigation = message("m3", VISITOR, t="livechat_navigation_history", navigation=page)
    body = payloads.room_event("LivechatEdit", ROOM, VISITOR, None, [navigation], send_navigation_history=True)
    assert body["messages"][0]["navigation"] == {"page": {"title": "Pricing"}}


def test_agent_id_marks_messages_not_sent_by_the_visitor() -> None:
    room = {**ROOM, "servedBy": SERVED_BY}
    history = [message("v", VISITOR), message("a", AGENT)]
    body = payloads.room_event("LivechatSessionTaken", room, VISITOR, AGENT, history)
    by_visitor, by_agent = body["messages"]
    assert "agentId" not in by_visitor
    assert by_agent["agentId"] == AGENT["_id"]
    assert by_agent["username"] == "jonas.weber" and by_agent["rid"] == ROOM["_id"]


def test_message_items_keep_rocket_chat_key_order() -> None:
    edited = message("m1", VISITOR, editedAt=T0, editedBy={"_id": VISITOR["_id"], "username": "guest-1042"})
    item = payloads.message_event(ROOM, VISITOR, None, edited)["messages"][0]
    assert list(item) == ["u", "_id", "username", "msg", "ts", "rid", "editedAt", "_updatedAt"]


def test_msg_falls_back_to_the_blocks_as_compact_json() -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "Grüße"}}]
    blocks_only = message("m1", AGENT, msg="", blocks=blocks)
    item = payloads.message_event(ROOM, VISITOR, None, blocks_only)["messages"][0]
    assert item["msg"] == '[{"type":"section","text":{"type":"mrkdwn","text":"Grüße"}}]'
    assert item["blocks"] == blocks


def test_file_messages_carry_file_and_attachments() -> None:
    upload = message("m1", VISITOR, file={"_id": "F1", "name": "invoice.pdf", "type": "application/pdf"})
    item = payloads.message_event(ROOM, VISITOR, None, upload)["messages"][0]
    assert item["file"]["_id"] == "F1"
    assert "attachments" not in item


def test_visitor_email_and_phone_are_the_stored_arrays() -> None:
    visitor = payloads.room_event("LivechatSessionStart", ROOM, VISITOR)["visitor"]
    assert visitor["email"] == [{"address": "maria@example.com"}, {"address": "m@example.org"}]
    assert visitor["phone"] == [{"phoneNumber": "+49 30 9018 2204"}]


def test_visitor_email_and_phone_are_left_out_when_empty() -> None:
    bare = {**VISITOR, "visitorEmails": [], "phone": None}
    visitor = payloads.room_event("LivechatSessionStart", ROOM, bare)["visitor"]
    assert "email" not in visitor and "phone" not in visitor


def test_agent_is_sent_only_when_the_room_is_served() -> None:
    assert "agent" not in payloads.room_event("LivechatSessionQueued", ROOM, VISITOR, AGENT)
    served = payloads.room_event("LivechatSessionTaken", {**ROOM, "servedBy": SERVED_BY}, VISITOR, AGENT)
    assert served["agent"] == {
        "_id": AGENT["_id"],
        "username": "jonas.weber",
        "name": "Jonas Weber",
        "email": "jonas@example.com",
    }


def test_crm_data_is_sent_only_when_the_room_has_it() -> None:
    assert "crmData" not in payloads.lead_capture_event(ROOM, VISITOR, None)
    body = payloads.lead_capture_event({**ROOM, "crmData": '{"id":7}'}, VISITOR, None)
    assert body["crmData"] == '{"id":7}'
    assert body["messages"] == []


def test_label_is_fname_or_else_label() -> None:
    room = {**ROOM, "fname": "", "label": "Old label"}
    assert payloads.room_event("LivechatSessionStart", room, VISITOR)["label"] == "Old label"


@pytest.mark.parametrize(
    ("event_type", "extra"),
    [
        ("LivechatSessionStart", ["departmentId"]),
        ("LivechatSessionQueued", ["departmentId"]),
        ("LivechatSessionTaken", ["departmentId", "servedBy"]),
        ("LivechatSessionForwarded", ["departmentId", "servedBy", "oldDepartmentId", "oldServedBy"]),
        ("LivechatSession", ["departmentId", "servedBy", "closedAt", "closedBy", "closer"]),
        ("LivechatEdit", []),
    ],
)
def test_each_room_event_type_adds_its_own_fields(event_type: str, extra: list[str]) -> None:
    room = {
        **ROOM,
        "servedBy": SERVED_BY,
        "closedAt": T0,
        "closedBy": {"_id": AGENT["_id"], "username": "jonas.weber"},
        "closer": "user",
    }
    body = payloads.room_event(event_type, room, VISITOR, AGENT, old_served_by=SERVED_BY, old_department_id="D0")
    assert list(body)[list(body).index("messages") + 1 :] == extra


def test_message_and_lead_capture_add_no_fields() -> None:
    room = {**ROOM, "servedBy": SERVED_BY}
    for body in (
        payloads.message_event(room, VISITOR, AGENT, message("m1", AGENT)),
        payloads.lead_capture_event(room, VISITOR, AGENT),
    ):
        assert list(body)[-1] == "messages"


def test_missing_fields_are_left_out_and_null_fields_kept() -> None:
    body = payloads.room_event("LivechatSessionQueued", {"_id": "R", "topic": None}, VISITOR)
    assert "departmentId" not in body and "createdAt" not in body
    assert body["topic"] is None


def test_legacy_session_start_has_no_department_id() -> None:
    assert "departmentId" not in payloads.room_event("LivechatSessionStart", ROOM, VISITOR, legacy=True)
    assert payloads.room_event("LivechatSessionQueued", ROOM, VISITOR, legacy=True)["departmentId"] == "D1"


def test_legacy_messages_copy_edited_at_whenever_the_document_has_it() -> None:
    # Newer code needs isEditedMessage (a Date editedAt and an editedBy); the old code copied the key.
    half_edited = message("m1", VISITOR, editedAt=T0)
    assert "editedAt" not in payloads.message_event(ROOM, VISITOR, None, half_edited)["messages"][0]
    old = payloads.message_event(ROOM, VISITOR, None, half_edited, legacy=True)["messages"][0]
    assert old["editedAt"] == "2026-11-24T10:15:30.123Z"
    assert "rid" not in old and "_updatedAt" not in old


def test_legacy_guest_info_starts_from_null_email_and_phone() -> None:
    room = {**ROOM, "servedBy": SERVED_BY}
    body = payloads.room_event(
        "LivechatSessionTaken", room, {**VISITOR, "visitorEmails": []}, {**AGENT, "emails": []}, legacy=True
    )
    assert body["visitor"]["email"] is None
    assert body["visitor"]["phone"] == [{"phoneNumber": "+49 30 9018 2204"}]
    assert body["agent"]["email"] is None


def test_admin_test_sample_sends_strings_for_email_and_phone() -> None:
    body = payloads.test_webhook_sample(T0)
    assert body["visitor"]["email"] == "email@address.com"
    assert body["visitor"]["phone"] == "192873192873"
    assert body["type"] == "LivechatSession"
    assert [m["ts"] for m in body["messages"]] == ["2026-11-24T10:15:30.123Z"] * 2


def test_offline_message_has_its_own_shape() -> None:
    body = payloads.offline_message_event("Peter", "peter@example.net", "Hello?", T0)
    assert body == {
        "type": "LivechatOfflineMessage",
        "sentAt": "2026-11-24T10:15:30.123Z",
        "visitor": {"name": "Peter", "email": "peter@example.net"},
        "message": "Hello?",
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 11, 24, 10, 15, 30, 123999, tzinfo=UTC), "2026-11-24T10:15:30.123Z"),
        (datetime(2026, 11, 24, 10, 15, 30), "2026-11-24T10:15:30.000Z"),
        (
            datetime(2026, 11, 24, 11, 15, 30, 5000, tzinfo=timezone(timedelta(hours=1))),
            "2026-11-24T10:15:30.005Z",
        ),
    ],
)
def test_dates_are_written_like_javascript_json(value: datetime, expected: str) -> None:
    assert payloads.js_date(value) == expected


def test_dates_inside_documents_are_converted() -> None:
    body = payloads.room_event("LivechatSessionTaken", {**ROOM, "servedBy": SERVED_BY}, VISITOR, AGENT)
    assert body["createdAt"] == body["servedBy"]["ts"] == "2026-11-24T10:15:30.123Z"


def test_events_rocket_chat_never_sends_are_refused() -> None:
    with pytest.raises(ValueError, match="closed rooms"):
        payloads.room_event("LivechatEdit", {**ROOM, "open": True}, VISITOR)
    with pytest.raises(ValueError, match="system messages"):
        payloads.message_event(ROOM, VISITOR, None, message("m1", AGENT, t="uj"))
    with pytest.raises(ValueError, match="LivechatSessionClosed"):
        payloads.room_event("LivechatSessionClosed", ROOM, VISITOR)


def test_fixtures_are_what_the_generator_writes() -> None:
    generator = load_generator()
    expected = {f"{name}.json": generator.render(body) for name, body in generator.build_fixtures().items()}
    committed = {path.name: path.read_text(encoding="utf-8") for path in FIXTURES.glob("*.json")}
    assert sorted(committed) == sorted(expected)
    for name, text in expected.items():
        assert committed[name] == text, f"{name} is stale: run tests/fixtures/webhooks/make_fixtures.py"


def test_fixture_names_match_their_type() -> None:
    for path in FIXTURES.glob("*.json"):
        event_type, _, variant = path.stem.partition("__")
        assert variant and json.loads(path.read_text(encoding="utf-8"))["type"] == event_type
