"""Reading and answering HTTP bodies, shared by every endpoint: size caps, strict JSON, token comparison."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from bridge.errors import InvalidEvent


class BodyTooLarge(Exception):
    pass


def answer(status: int, **body: Any) -> JSONResponse:
    # After a 413 the rest of the body is unread; closing the connection stops the server from draining it.
    headers = {"Connection": "close"} if status == 413 else None
    return JSONResponse(body, status_code=status, headers=headers)


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
