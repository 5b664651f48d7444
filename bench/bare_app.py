"""The reference for bench.intake: a bare Starlette POST endpoint that reads the body and answers a small JSON.

uvicorn bench.bare_app:app --loop uvloop --http httptools --log-level warning --no-access-log
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def webhook(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"ok": True, "outcome": "accepted"})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[Route("/webhooks/livechat", webhook, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
)
