"""The ASGI entry point for uvicorn's factory mode: settings are read when the process starts, not on import."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from bridge import logs
from bridge.app import create_app
from bridge.settings import Settings


def create_app_from_env() -> Starlette:
    settings = Settings.from_env(os.environ)
    logs.configure(settings)
    return create_app(settings)
