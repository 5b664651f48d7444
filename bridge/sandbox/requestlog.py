"""The sandbox's request log: every request it answered, in order, for tests to assert."""

import threading
from dataclasses import dataclass
from typing import Any

Query = dict[str, str | list[str]]


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str  # without the query string
    query: Query  # a repeated key (agents[]=a&agents[]=b) maps to a list
    body: Any  # the parsed JSON body, or None
    status: int
    user_id: str | None  # the authenticated caller, if any
    at: float  # time.monotonic() when the request arrived

    @property
    def line(self) -> str:
        return f"{self.method} {self.path} > {self.status}"


class RequestLog:
    def __init__(self) -> None:
        self._entries: list[LoggedRequest] = []
        self._lock = threading.Lock()

    def append(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._entries)

    def lines(self) -> list[str]:
        return [entry.line for entry in self.entries()]

    def count(self, method: str, path: str) -> int:
        return sum(1 for entry in self.entries() if entry.method == method and entry.path == path)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
