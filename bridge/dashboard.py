"""The live view: one self-contained page for operators (inline CSS and JS, no external URL) and its JSON data.

| endpoint | ``BRIDGE_API_TOKEN`` in | answers |
|---|---|---|
| ``GET /``, ``GET /dashboard`` | ``?token=`` or ``Authorization: Bearer`` | 200 the page; 401/403 token |
| ``GET /dashboard/data`` | ``Authorization: Bearer`` only | 200 ``status.snapshot()``; 401/403 token; 503 Redis down |

A browser cannot send a header when a page is first opened, so the page accepts the token in its URL; its script
then sends it as a bearer header when it polls the data every 2 s, so the polling requests carry no token in
their URLs. Without ``BRIDGE_API_TOKEN`` both answer 403 (unless ``BRIDGE_INSECURE_DEV=1``), like the API.
The page's Content-Security-Policy allows only its own inline script and style (by hash) and requests to this
origin: it cannot load or send anything elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

import redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bridge.bodies import answer, token_matches
from bridge.settings import Settings
from bridge.status import snapshot

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def dashboard_routes(settings: Settings, connection: redis.Redis) -> list[Route]:
    page = resources.files("bridge").joinpath("static/dashboard.html").read_text(encoding="utf-8")
    page_headers = {**PAGE_HEADERS, "Content-Security-Policy": content_security_policy(page)}

    async def dashboard(request: Request) -> Response:
        problem = token_problem(settings, request.query_params.get("token") or _bearer(request))
        if problem is not None:
            status, reason = problem
            hint = "open this page as /?token=<BRIDGE_API_TOKEN>" if status == 401 else ""
            return PlainTextResponse(f"{reason}\n{hint}".strip() + "\n", status_code=status, headers=PAGE_HEADERS)
        return Response(page, media_type="text/html; charset=utf-8", headers=page_headers)

    async def dashboard_data(request: Request) -> Response:
        problem = token_problem(settings, _bearer(request))
        if problem is not None:
            status, reason = problem
            return answer(status, ok=False, error=reason)
        try:
            seen = await run_in_threadpool(snapshot, settings, connection)
        except (RedisError, OSError) as error:
            return answer(503, ok=False, error=f"Redis unavailable ({type(error).__name__})")
        return JSONResponse(seen, headers={"Cache-Control": "no-store"})

    return [
        Route("/", dashboard, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/dashboard/data", dashboard_data, methods=["GET"]),
    ]


def token_problem(settings: Settings, presented: str | None) -> tuple[int, str] | None:
    """The bridge API's policy (``bridge.api``): no token configured 403, none presented 401, a wrong one 403."""
    if not settings.api_token:
        return None if settings.insecure_dev else (403, "set BRIDGE_API_TOKEN to use the live view")
    if not presented:
        return 401, "the bridge API token is required"
    if not token_matches(presented, settings.api_token):
        return 403, "wrong bridge API token"
    return None


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def content_security_policy(page: str) -> str:
    """Only this page's own inline script and style may run, and it may only talk to the bridge."""

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(t.encode()).digest()).decode()}'" for t in found)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
