"""One sandbox endpoint: its path, what Rocket.Chat checks before the handler, and the handler.

The checks mirror Rocket.Chat's route options (`authRequired`, `permissionsRequired`,
`validateParams`); app.py runs them in Rocket.Chat's order.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.sandbox.documents import Doc
from bridge.sandbox.requestlog import Query

if TYPE_CHECKING:
    from bridge.sandbox.state import SandboxState


@dataclass(frozen=True)
class Call:
    """What a handler sees of one request."""

    state: "SandboxState"
    major: int
    user: Doc | None
    params: dict[str, str]  # path parameters
    query: Query
    body: Doc

    @property
    def user_id(self) -> str:
        assert self.user is not None, "only authRequired endpoints ask for the caller"
        return str(self.user["_id"])

    def arg(self, key: str) -> str | None:
        """A query parameter's (first) value."""
        value = self.query.get(key)
        if isinstance(value, list):
            return value[0] if value else None
        return value

    def args(self, key: str) -> list[str]:
        """All values of `key` and `key[]` (Express's qs turns both into one array)."""
        values: list[str] = []
        for name in (key, f"{key}[]"):
            value = self.query.get(name)
            values += value if isinstance(value, list) else [] if value is None else [value]
        return values


Handler = Callable[[Call], dict[str, Any]]  # returns the body; app.py adds `success: true`
Validator = Callable[[Call], str | None]  # returns AJV-style error text, or None when valid


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # Rocket.Chat's route with {name} parameters, e.g. /api/v1/livechat/department/{_id}/agents
    handler: Handler
    auth: bool = True
    permissions: tuple[str, ...] = ()
    any_permission: bool = False  # Rocket.Chat's `operation: 'hasAny'`; the default is hasAll
    validate: Validator | None = None
    last_major: int | None = None  # the route was removed after this major version

    def exists_in(self, major: int) -> bool:
        return self.last_major is None or major <= self.last_major

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if method != self.method:
            return None
        found = _compiled(self.path).fullmatch(path)
        return found.groupdict() if found else None

    def permitted(self, state: "SandboxState", user: Doc) -> bool:
        if not self.permissions:
            return True
        granted = [state.has_permission(user, permission) for permission in self.permissions]
        return any(granted) if self.any_permission else all(granted)


_patterns: dict[str, re.Pattern[str]] = {}


def _compiled(path: str) -> re.Pattern[str]:
    if path not in _patterns:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))
        _patterns[path] = re.compile(regex)
    return _patterns[path]
