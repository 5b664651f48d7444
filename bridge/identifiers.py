"""Identifiers taken from input, checked at the edge: what Rocket.Chat can produce, nothing absurd.

Rocket.Chat's ids (rooms, departments, users, visitors, messages) are Meteor's ``Random.id()``: 17 characters of
``23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz`` (``packages/random`` in Meteor; the sandbox makes its
ids the same way). A few are fixed words: the bot user is ``rocket.cat`` (``apps/meteor/server/startup/
initialData.ts``), and the admin's webhook test sends the room ``fasd6f5a4sd6f8a4sdf``
(``apps/meteor/app/livechat/server/api/v1/webhooks.ts``). So an id is accepted when it is 1 to ``MAX_ID_LENGTH``
characters of letters, digits, ``_``, ``-`` and ``.`` (room for imported or older ids, UUIDs and Mongo ObjectIds),
and refused otherwise with 400 naming the field. No accepted id holds ``:`` (the separator of our Redis keys),
``/``, whitespace, a control character or anything outside ASCII, and none is longer than 64 characters, so every
Redis key built from one is short and in its own namespace (``bridge.keys``).

A ``requestId`` of ``POST /voice/route`` is ours, not Rocket.Chat's: it becomes part of an RQ job id, which RQ
allows only letters, digits, ``_`` and ``-`` in, so it has no ``.``.
"""

from __future__ import annotations

import re

from bridge.errors import InvalidEvent

MAX_ID_LENGTH = 64
ROCKETCHAT_ID = re.compile(rf"[0-9A-Za-z_.-]{{1,{MAX_ID_LENGTH}}}")
REQUEST_ID = re.compile(rf"[0-9A-Za-z_-]{{1,{MAX_ID_LENGTH}}}")
ROCKETCHAT_ID_RULE = f"1-{MAX_ID_LENGTH} characters of letters, digits, '_', '-' or '.'"
REQUEST_ID_RULE = f"1-{MAX_ID_LENGTH} characters of letters, digits, '_' or '-'"


def is_rocketchat_id(value: object) -> bool:
    return isinstance(value, str) and ROCKETCHAT_ID.fullmatch(value) is not None


def is_request_id(value: object) -> bool:
    return isinstance(value, str) and REQUEST_ID.fullmatch(value) is not None


def check_rocketchat_id(value: str, field: str) -> str:
    """``value`` if it is a Rocket.Chat id, else ``InvalidEvent`` naming ``field`` (answered 400)."""
    if ROCKETCHAT_ID.fullmatch(value) is None:
        raise InvalidEvent(f"field '{field}' must be a Rocket.Chat id: {ROCKETCHAT_ID_RULE}", field)
    return value


def check_request_id(value: str, field: str) -> str:
    if REQUEST_ID.fullmatch(value) is None:
        raise InvalidEvent(f"field '{field}' must be {REQUEST_ID_RULE}", field)
    return value
