"""Logs that cannot be forged (issue 12): whatever a request carries, one record is one line, unprintable characters
show as escapes, every value is capped, and JSON lines parse.

The forged room id of the issue, ``r1\\nINFO forged log line status=200``, went out as two lines in the text log
(and CR and U+202E passed raw). These tests send it, and its CR and U+202E variants, through the logger directly and
through a real web app over HTTP (in a room id, an unknown event type, a 400's error message), in both formats.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest

from bridge import logs
from bridge.app import create_app
from bridge.settings import Secret, Settings
from tests.conftest import WEBHOOK_TOKEN
from tests.support import ServerThread, load_fixture

FORGED = [
    "r1\nINFO forged log line status=200",
    "r1\rINFO forged log line status=200",
    "r1\u202eINFO forged log line status=200",
    "r1\x1b[2K\rINFO forged log line status=200",
    "r1\x85INFO\u2028forged\u2029log\u2066line\u200fstatus=200",
]
# What a text record's first line looks like; any other line is a forgery (no test here logs a traceback).
RECORD_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
BIDI_AND_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_omnibridge", False)]:
        root.removeHandler(handler)


def configure(stream: io.StringIO, **settings: object) -> logging.Logger:
    logs.configure(Settings(**settings), stream=stream)  # type: ignore[arg-type]
    return logging.getLogger("test.forging")


def lines_of(text: str) -> list[str]:
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def assert_unforged(text: str) -> list[str]:
    """Every line is a record of its own, and nothing unprintable reached the output."""
    lines = lines_of(text)
    for line in lines:
        assert RECORD_LINE.match(line), f"a line that is not a record: {line!r}"
    assert not BIDI_AND_CONTROLS.search(text.replace("\n", "")), f"a raw control or bidi character in {text!r}"
    return lines


@pytest.mark.parametrize("value", FORGED)
def test_a_forged_value_stays_on_its_line_with_visible_escapes(captured, value):
    log = configure(captured)
    log.warning("webhook refused: %s", value, extra={"room_id": value, "event": value, "detail": value})
    [line] = assert_unforged(captured.getvalue())
    shown = value.encode("unicode_escape").decode("ascii")
    assert f"webhook refused: {shown} " in line
    assert f'room_id="{shown}"' in line and f'event="{shown}"' in line and f'detail="{shown}"' in line


def test_the_issue_s_line_is_escaped_exactly():
    record = logging.makeLogRecord(
        {"name": "bridge.web", "levelname": "INFO", "msg": "webhook %s", "args": ("accepted",)}
    )
    record.room_id = "r1\nINFO forged log line status=200"
    text = logs.TextFormatter().format(record)
    assert text.endswith(r'webhook accepted room_id="r1\nINFO forged log line status=200"')
    assert "\n" not in text


def test_our_template_and_numbers_are_kept_and_a_field_cannot_pose_as_another(captured):
    log = configure(captured)
    log.info("drained %d chats in %.1f s (%s)", 12, 0.25, "batch", extra={"status": 200, "room_id": "R1 status=500"})
    [line] = assert_unforged(captured.getvalue())
    assert line.endswith('drained 12 chats in 0.2 s (batch) room_id="R1 status=500" status=200')


def test_every_value_is_capped_with_a_marker(captured):
    log = configure(captured)
    log.warning("type %s", "x" * 5000, extra={"detail": "\x1b" * 5000})
    [line] = assert_unforged(captured.getvalue())
    assert f"type {'x' * logs.VALUE_CHARS}...[4800 more chars]" in line
    escaped = "\\x1b" * (logs.VALUE_CHARS // 4)
    assert f'detail="{escaped}...[{5000 - logs.VALUE_CHARS // 4} more chars]"' in line
    assert len(line) < 3 * logs.VALUE_CHARS + 200


def test_a_mapping_argument_and_a_message_without_arguments_are_escaped(captured):
    log = configure(captured)
    log.warning("room %(room)s", {"room": "a\nb"})
    log.warning("third-party text \u202e without arguments\nINFO forged")
    first, second = assert_unforged(captured.getvalue())
    assert first.endswith(r"room a\nb")
    assert second.endswith(r"third-party text \u202e without arguments\nINFO forged")


def test_a_traceback_stays_readable_and_its_message_is_escaped(captured):
    log = configure(captured)
    try:
        raise ValueError("bad room r1\nINFO forged log line status=200\u202e")
    except ValueError as error:
        try:
            raise RuntimeError("while answering \r\nERROR forged too") from error
        except RuntimeError:
            log.exception("unexpected error while answering %s %s", "POST", "/webhooks/livechat\n")
    lines = lines_of(captured.getvalue())
    assert RECORD_LINE.match(lines[0]) and lines[0].endswith(r"POST /webhooks/livechat\n")
    assert not any(RECORD_LINE.match(line) for line in lines[1:]), "a traceback line posing as a record"
    assert r"ValueError: bad room r1\nINFO forged log line status=200\u202e" in lines
    assert r"RuntimeError: while answering \r\nERROR forged too" in lines
    assert "Traceback (most recent call last):" in lines
    assert any(line.startswith('  File "') and "test_log_forging.py" in line for line in lines)
    assert "The above exception was the direct cause of the following exception:" in lines
    assert not BIDI_AND_CONTROLS.search(captured.getvalue().replace("\n", ""))


def test_masking_keeps_each_value_apart_so_it_is_still_capped(captured):
    log = configure(captured, webhook_token=Secret("hook-secret-1234"))
    log.warning("token %s then %s", "hook-secret-1234\nINFO forged", "y" * 1000)
    [line] = assert_unforged(captured.getvalue())
    assert r"token ********\nINFO forged then " in line
    assert f"{'y' * logs.VALUE_CHARS}...[800 more chars]" in line
    assert "hook-secret-1234" not in line


@pytest.mark.parametrize("value", FORGED)
def test_json_lines_parse_and_carry_the_same_escaped_capped_values(captured, value):
    log = configure(captured, log_format="json")
    log.warning("webhook refused: %s", value + "z" * 500, extra={"room_id": value, "status": 400})
    try:
        raise ValueError(value)
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in lines_of(captured.getvalue()))
    shown = value.encode("unicode_escape").decode("ascii")
    assert first["msg"].startswith(f"webhook refused: {shown}") and first["msg"].endswith(" more chars]")
    assert first["room_id"] == shown and first["status"] == 400
    assert second["exc"].endswith(f"ValueError: {shown}")
    assert not BIDI_AND_CONTROLS.search(first["msg"] + first["room_id"])


# The same, end to end: requests over real HTTP to the web app, with the project's handler on the root logger.


def queued(room_id: str) -> dict:
    body = load_fixture("LivechatSessionQueued__basic")
    body["_id"] = room_id
    return body


def post(web: ServerThread, body: dict | bytes) -> httpx.Response:
    headers = {"X-RocketChat-Livechat-Token": WEBHOOK_TOKEN}
    if isinstance(body, bytes):
        return httpx.post(f"{web.url}/webhooks/livechat", content=body, headers=headers)
    return httpx.post(f"{web.url}/webhooks/livechat", json=body, headers=headers)


def test_webhooks_carrying_forged_text_make_one_line_each(settings, captured):
    configure(captured, log_level="INFO")
    with ServerThread(create_app(settings)) as web:
        for value in FORGED:
            for body in (queued(value), {"type": value}, {"type": "LivechatSessionQueued", "_id": 7, "x": value}):
                before = len(captured.getvalue())
                answer = post(web, body)
                assert answer.status_code in (200, 400)
                assert len(assert_unforged(captured.getvalue()[before:])) == 1
            # An unknown type is logged once, shown escaped: the issue's escapes are visible in the line.
            shown = value.encode("unicode_escape").decode("ascii")
            assert f"webhook of unknown type '{shown}' ignored" in captured.getvalue()
        before = len(captured.getvalue())
        assert post(web, b'{"type": "LivechatSessionQueued", "_id": "r1\\nINFO forged"').status_code == 400
        assert_unforged(captured.getvalue()[before:])


def test_webhooks_carrying_forged_text_make_valid_json_lines(settings, captured):
    configure(captured, log_format="json", log_level="INFO")
    with ServerThread(create_app(settings)) as web:
        for value in FORGED:
            post(web, queued(value))
            post(web, {"type": value})
    records = [json.loads(line) for line in lines_of(captured.getvalue())]
    assert records, "the webhooks were logged"
    for record in records:
        for field in ("msg", "room_id", "event"):
            assert not BIDI_AND_CONTROLS.search(str(record.get(field, ""))), record
