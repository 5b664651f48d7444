"""The service's own exceptions, one small flat set per boundary."""

from __future__ import annotations

from collections.abc import Sequence


class BridgeError(Exception):
    """Base class for errors the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A configuration variable is missing or malformed; the message names it (never its value)."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable


class MissingConfig(ConfigError):
    """Variables a process needs are not set. One message names every one of them, so one restart after setting
    them all is enough (not one restart per variable); ``variables`` lists them, ``variable`` is the first."""

    def __init__(self, variables: Sequence[str], problem: str) -> None:
        names = tuple(variables)
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        BridgeError.__init__(self, f"{listed} {'is' if len(names) == 1 else 'are'} {problem}")
        self.variable = names[0]
        self.variables = names


class InvalidEvent(BridgeError):
    """A webhook payload that cannot be understood; the message names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RocketChatError(BridgeError):
    """Rocket.Chat answered with an error, or could not be reached. Messages say what to do about it."""

    transient = False

    def __init__(self, message: str, route: str = "", status: int | None = None, error_type: str | None = None):
        super().__init__(message)
        self.route = route
        self.status = status
        self.error_type = error_type


class CredentialsRejected(RocketChatError):
    """401, also after logging in again: the configured user id/token or username/password are wrong."""


class PermissionDenied(RocketChatError):
    """403: the service account lacks a permission; ``permission`` names it. Permanent until an admin fixes it."""

    def __init__(self, message: str, route: str, status: int, permission: str) -> None:
        super().__init__(message, route, status, "forbidden")
        self.permission = permission


class RequestRejected(RocketChatError):
    """400: Rocket.Chat refused the request; ``error_type`` is its error code (``error-inquiry-taken``, ...)."""


class NotFound(RocketChatError):
    """404: the route does not exist on this server version, or the resource does not."""


class RocketChatUnavailable(RocketChatError):
    """5xx, timeouts or connection errors that outlasted the bounded retries. Worth trying again in ``retry_after`` s.

    Nothing is known of a call that timed out: Rocket.Chat may have applied it."""

    transient = True
    retry_after = 2.0


class FetchInProgress(RocketChatUnavailable):
    """Another process is fetching this from Rocket.Chat right now and nothing usable is cached yet: come back in a
    moment instead of waiting for it."""

    retry_after = 0.25


class RateLimited(RocketChatUnavailable):
    """The call was not made: Rocket.Chat's limit for the route (learned from its headers, or a 429) has no call left
    before ``retry_after`` seconds. Nothing was sent, so nothing was applied."""

    def __init__(self, message: str, route: str, retry_after: float, status: int | None = None) -> None:
        super().__init__(message, route, status, "error-too-many-requests" if status == 429 else None)
        self.retry_after = max(0.05, retry_after)
