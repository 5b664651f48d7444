"""Structured logging: one line per event, text or JSON, with secrets masked as a last line of defence.

Code logs ids and outcomes, never tokens, passwords or visitor data; ``SecretFilter`` additionally replaces any
configured secret value that still reaches a log record (a URL with a password, an upstream error echoing a
header) with ``********``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable

from bridge.settings import Settings

# Extra fields code may attach with ``logger.info(..., extra={...})``; they become JSON keys or ``k=v`` pairs.
CONTEXT_FIELDS = ("event", "room_id", "event_id", "job_id", "outcome", "status", "agent_id", "route", "detail")
MASK = "********"


class SecretFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = self._mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._mask(record.exc_text)
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str):
                record.__dict__[name] = self._mask(value)
        return True

    def _mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info or record.exc_text:
            line["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = [f"{n}={record.__dict__[n]}" for n in CONTEXT_FIELDS if record.__dict__.get(n) is not None]
        if pairs:
            head, sep, tail = text.partition("\n")
            text = f"{head} {' '.join(pairs)}{sep}{tail}"
        return text


def secrets_of(settings: Settings) -> list[str]:
    return [
        settings.webhook_token,
        settings.rocketchat_auth_token,
        settings.rocketchat_password,
        settings.api_token,
        settings.external_queue_token,
    ]


def configure(settings: Settings, stream: object = None) -> None:
    """Install one handler on the root logger (idempotent), for the web process, workers and CLI alike."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(SecretFilter(secrets_of(settings)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_omnibridge", False)]:
        root.removeHandler(old)
    handler._omnibridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
