"""Query and body parameters the way Rocket.Chat reads them: pagination, sort, booleans, AJV checks."""

import json
from collections.abc import Iterable, Mapping
from typing import Any

from bridge.sandbox import errors
from bridge.sandbox.documents import Doc
from bridge.sandbox.endpoint import Call

# Rocket.Chat settings API_Default_Count, API_Upper_Count_Limit (API_Allow_Infinite_Count is on).
DEFAULT_COUNT = 50
UPPER_COUNT_LIMIT = 100

Sort = dict[str, int]


def pagination(call: Call) -> tuple[int, int]:
    """`getPaginationItems`: (offset, count); count 0 means "no limit"."""
    offset = _int_or(call.arg("offset"), 0)
    count = _int_or(call.arg("count"), DEFAULT_COUNT)
    return max(offset, 0), min(max(count, 0), UPPER_COUNT_LIMIT)


def page(items: list[Doc], offset: int, count: int) -> list[Doc]:
    return items[offset:] if count == 0 else items[offset : offset + count]


def sort_spec(call: Call, default: Sort | None = None) -> Sort | None:
    """`parseJsonQuery`'s sort: a JSON object of field -> 1 | -1."""
    raw = call.arg("sort")
    if raw is None:
        return default
    try:
        sort = json.loads(raw)
        if not isinstance(sort, dict) or any(value not in (1, -1) for value in sort.values()):
            raise ValueError(raw)
    except ValueError:
        raise errors.meteor_error(
            "error-invalid-sort",
            f'Invalid sort parameter provided: "{raw}"',
            {"helperMethod": "parseJsonQuery"},
        ) from None
    return sort


def sort_docs(docs: Iterable[Doc], sort: Sort | None) -> list[Doc]:
    ordered = list(docs)
    for field, direction in reversed(list((sort or {}).items())):
        ordered.sort(key=lambda doc: _mongo_order(field_value(doc, field)), reverse=direction == -1)
    return ordered


def field_value(doc: Mapping[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _mongo_order(value: Any) -> tuple[int, Any]:
    # MongoDB compares across types: null < numbers < strings < everything else.
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (4, value)
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value, sort_keys=True))


def flag(call: Call, key: str, default: bool) -> bool:
    """A boolean query parameter; AJV's coerceTypes accepts 'true'/'false'."""
    raw = call.arg(key)
    return default if raw is None else raw.lower() in ("true", "1")


def contains(text: str, *values: Any) -> bool:
    """Rocket.Chat's `new RegExp(escapeRegExp(text), 'i')` test on any of the values."""
    needle = text.lower()
    return any(isinstance(value, str) and needle in value.lower() for value in values)


def check_body(
    body: Doc,
    required: Mapping[str, type],
    optional: Mapping[str, type] | None = None,
    *,
    closed: bool = True,
) -> str | None:
    """An AJV-style check of a JSON body; returns AJV's message, as Rocket.Chat puts it in `error`."""
    optional = optional or {}
    for key in required:
        if key not in body:
            return f"must have required property '{key}'"
    if closed and any(key not in required and key not in optional for key in body):
        return "must NOT have additional properties"
    for key, kind in {**required, **optional}.items():
        if key in body and not isinstance(body[key], kind):
            return f"must be {_json_type(kind)}"
    return None


def _json_type(kind: type) -> str:
    return {str: "string", bool: "boolean", dict: "object", int: "integer", list: "array"}.get(kind, "valid")


def _int_or(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default
