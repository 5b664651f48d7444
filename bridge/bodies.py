"""Reading and answering HTTP bodies, shared by every endpoint: size caps, a time limit, strict JSON, token
comparison."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.errors import InvalidEvent


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    """The request's body did not arrive within the body timeout (``WEB_BODY_TIMEOUT_SECONDS``)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"request body not received within {seconds:g} s")
        self.seconds = seconds


class BodyDeadline:
    """ASGI middleware: the whole request body must arrive within ``seconds`` of the request reaching the app.

    A read of the body past that raises ``BodyTimeout`` in the endpoint, which the app answers 408 with
    ``Connection: close``. Rocket.Chat sends a webhook's body at once and waits ``Livechat_http_timeout`` (5 s by
    default) for the answer, so a body still arriving after seconds is not Rocket.Chat's. Reads once the body is
    complete (a streaming response watching for a disconnect) are not timed.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.seconds) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)


def answer(status: int, **body: Any) -> JSONResponse:
    # After a 413 or a 408 the rest of the body is unread; closing the connection stops the server from draining it.
    headers = {"Connection": "close"} if status in (408, 413) else None
    return JSONResponse(body, status_code=status, headers=headers)


def bearer(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes: a declared or streamed body past the cap is refused, never buffered whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidEvent("Content-Length header is not a number")
        if int(declared) > limit:
            raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(body: bytes) -> object:
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidEvent("the body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise InvalidEvent(f"the body is not valid JSON ({error.msg} at position {error.pos})") from None
    except ValueError as error:  # e.g. an integer literal past Python's digit limit
        raise InvalidEvent(f"the body is not acceptable JSON ({error})") from None
    except RecursionError:
        raise InvalidEvent("the body is nested too deeply") from None


def token_matches(provided: str | None, expected: str) -> bool:
    """Constant-time comparison; hashing first makes a wrong-length token take as long to refuse as any other."""
    given = hashlib.sha256((provided or "").encode()).digest()
    return hmac.compare_digest(given, hashlib.sha256(expected.encode()).digest())
