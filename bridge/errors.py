"""The service's own exceptions, one small flat set per boundary."""

from __future__ import annotations


class BridgeError(Exception):
    """Base class for errors the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A configuration variable is missing or malformed; the message names it (never its value)."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable


class InvalidEvent(BridgeError):
    """A webhook payload that cannot be understood; the message names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownEventType(InvalidEvent):
    """A webhook whose ``type`` is not one Rocket.Chat sends."""


class RecordingFailed(BridgeError):
    """An accepted event could not be made durable (Redis unreachable, or answering errors)."""
