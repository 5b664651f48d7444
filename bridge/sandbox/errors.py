"""Rocket.Chat's error answers, per major version (docs/rocketchat.md §5).

Every failure an endpoint can give is built here, so the 7.x/8.x differences live in one place.
`major >= 8` is Rocket.Chat's `applyBreakingChanges = shouldBreakInVersion('8.0.0')`.
"""

from http import HTTPStatus
from typing import Any

LOGIN_REQUIRED = "You must be logged in to do this."
NO_PERMISSION = "User does not have the permissions required for this action"


class ApiError(Exception):
    """A complete Rocket.Chat error answer: the HTTP status and the JSON body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {body.get('error')}")
        self.status = status
        self.body = body
        self.headers = headers or {}


def unauthorized(major: int) -> ApiError:
    """No or unknown X-User-Id / X-Auth-Token on an authRequired route."""
    body: dict[str, Any] = {"success": False, "error": LOGIN_REQUIRED}
    if major < 8:
        body |= {"status": "error", "message": LOGIN_REQUIRED}
    return ApiError(401, body)


def login_failed(major: int, error: str | int, reason: str) -> ApiError:
    """`POST /api/v1/login` failure; pre-8 servers copy the Meteor error into the body."""
    if major >= 8:
        return ApiError(401, {"success": False, "error": "unauthorized"})
    if reason == "User not found":
        error, reason = "Unauthorized", "Unauthorized"
    return ApiError(401, {"success": False, "error": error, "status": "error", "message": reason})


def permission_denied(major: int) -> ApiError:
    """A route's `permissionsRequired` check failed (Meteor error, so the code is appended)."""
    code = "error-forbidden" if major >= 8 else "error-unauthorized"
    return ApiError(403, {"success": False, "error": f"{NO_PERMISSION} [{code}]"})


def forbidden(major: int) -> ApiError:
    """A handler's own `API.v1.forbidden()` with no message."""
    return ApiError(403, {"success": False, "error": "forbidden" if major >= 8 else "unauthorized"})


def not_found(message: str = "Resource not found") -> ApiError:
    return ApiError(404, {"success": False, "error": message})


def failure(message: str) -> ApiError:
    """`API.v1.failure(msg)` or a handler's `throw new Error(msg)`: no errorType."""
    return ApiError(400, {"success": False, "error": message})


def meteor_error(code: str, reason: str, details: dict[str, Any] | None = None) -> ApiError:
    """`throw new Meteor.Error(code, reason, details)` inside a handler."""
    body: dict[str, Any] = {"success": False, "error": f"{reason} [{code}]", "errorType": code}
    if details is not None:
        body["details"] = details
    return ApiError(400, body)


def invalid_params(message: str) -> ApiError:
    """A failed AJV `validateParams` check."""
    return meteor_error("invalid-params", message)


def too_many_requests(wait_seconds: int) -> ApiError:
    message = (
        "Error, too many requests. Please slow down. You must wait "
        f"{wait_seconds} seconds before trying this endpoint again. [error-too-many-requests]"
    )
    return ApiError(429, {"success": False, "error": message})


def status_error(status: int) -> ApiError:
    """The body Rocket.Chat (or the proxy in front of it) gives for an injected status."""
    if status == 429:
        return too_many_requests(60)
    messages = {500: "Internal server error", 503: "Service Unavailable"}
    message = messages.get(status) or HTTPStatus(status).phrase
    return ApiError(status, {"success": False, "error": message})
