"""Structured logging: one line per event, text or JSON, with secrets masked as a last line of defence.

Code logs ids and outcomes, never tokens, passwords or visitor data; ``SecretFilter`` additionally replaces any
configured secret value that still reaches a log record (a URL with a password, an upstream error echoing a
header) with ``********``.

Nothing a request carries can forge a line. Every value interpolated into a message (``log.info("... %s", value)``),
every context field and the exception message of a traceback is escaped: characters that are not printable
(C0 and C1 controls, DEL, CR, LF, tabs, line and paragraph separators, bidirectional overrides and isolates such as
U+202E, zero-width marks) are written as Python escapes (``\\n``, ``\\x1b``, ``\\u202e``), and each value is cut at
``VALUE_CHARS`` characters with a marker saying how much was cut. Our own message templates hold no such
characters, so they read as written; a traceback keeps its lines, and only its exception message is escaped. A
text line's context fields are ``key=value`` pairs, a value with a space, ``=`` or ``"`` in double quotes (logfmt),
so a value cannot pose as another field. JSON lines carry the same escaped, capped values and stay valid JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType

from bridge.settings import Settings

# Extra fields code may attach with ``logger.info(..., extra={...})``; they become JSON keys or ``k=v`` pairs.
CONTEXT_FIELDS = ("event", "room_id", "event_id", "job_id", "outcome", "status", "agent_id", "route", "detail")
MASK = "********"
VALUE_CHARS = 200  # one interpolated value or context field, once escaped
MESSAGE_CHARS = 4000  # a whole message (a third party's message may hold request text without ``%s``)
EXCEPTION_CHARS = 1000  # the message of an exception in a traceback

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def shown(value: object, limit: int = VALUE_CHARS) -> str:
    """``value`` as log text: unprintable characters as Python escapes, at most ``limit`` characters, then a marker.

    Escaping is idempotent (an escape is printable), so a message already made of shown values can be shown again.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():
        return text
    pieces: list[str] = []
    size = 0
    for index, char in enumerate(text):
        piece = char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        if size + len(piece) > limit:
            return "".join(pieces) + f"...[{len(text) - index} more chars]"
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)


def _shown_arg(value: object) -> object:
    # Numbers stay numbers, for %d and %.1f; everything else is text the request may have chosen.
    if isinstance(value, int | float):
        return value
    return shown(value)


def safe_message(record: logging.LogRecord) -> str:
    """The record's message with every argument shown safely; the template is ours and stays as written."""
    args = record.args
    message = str(record.msg)
    if args:
        if isinstance(args, Mapping):
            safe: object = {key: _shown_arg(value) for key, value in args.items()}
        else:
            safe = tuple(_shown_arg(value) for value in args)
        try:
            message = message % safe
        except (TypeError, ValueError, KeyError):  # a template that wanted the raw value; never lose the line
            message = record.getMessage()
    return shown(message, MESSAGE_CHARS)


def format_exception(exc_info: ExcInfo) -> str:
    """A traceback as Python prints it, except that each exception's message (and notes) is shown safely: the
    frames are our code, the message may quote a request."""
    report = traceback.TracebackException(*exc_info)
    pending, seen = [report], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(getattr(current, "_str", None), str):
            current._str = shown(current._str, EXCEPTION_CHARS)
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            current.__notes__ = [shown(note, EXCEPTION_CHARS) for note in notes]
        for linked in (current.__cause__, current.__context__, *(getattr(current, "exceptions", None) or ())):
            if linked is not None:
                pending.append(linked)
    lines = "".join(report.format()).rstrip("\n").split("\n")
    # A second guard, should a Python version keep the message elsewhere: no line keeps a control character.
    return "\n".join(shown(line, MESSAGE_CHARS) for line in lines)


def _exception_text(record: logging.LogRecord, mask: Callable[[str], str]) -> str | None:
    # Formatted here, never taken from ``record.exc_text``: another handler's formatter may have cached it raw.
    if record.exc_info and record.exc_info[0] is not None:
        return mask(format_exception(record.exc_info))  # type: ignore[arg-type]
    if record.exc_text:
        return "\n".join(shown(line, MESSAGE_CHARS) for line in mask(record.exc_text).split("\n"))
    return None


def _unmasked(text: str) -> str:
    return text


def _field_value(value: object) -> object:
    return value if isinstance(value, int | float) else shown(value)


def _pair(name: str, value: object) -> str:
    text = str(_field_value(value))
    if text == "" or any(char in text for char in ' ="'):
        text = '"' + text.replace('"', "\\x22") + '"'
    return f"{name}={text}"


class SecretFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        # Each argument is masked on its own, so the formatter still tells our template from the values in it.
        if isinstance(record.args, Mapping):
            record.args = {key: self._masked_arg(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(self._masked_arg(value) for value in record.args)
        template = str(record.msg)
        if self._mask(template) != template:
            record.msg = self._mask(template)
        message = record.getMessage()
        masked = self._mask(message)
        if masked != message:  # a secret across a template and a value: mask the message as a whole
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = format_exception(record.exc_info)  # type: ignore[arg-type]
        if record.exc_text:
            record.exc_text = self._mask(record.exc_text)
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str):
                record.__dict__[name] = self._mask(value)
        return True

    def _masked_arg(self, value: object) -> object:
        if isinstance(value, int | float):
            return value
        text = value if isinstance(value, str) else str(value)
        masked = self._mask(text)
        return masked if masked != text else value

    def mask(self, text: str) -> str:
        return self._mask(text)

    def _mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, mask: Callable[[str], str] = _unmasked) -> None:
        super().__init__()
        self.mask = mask  # the handler's SecretFilter's, for the traceback this formatter makes

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": safe_message(record),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = _field_value(value)
        exception = _exception_text(record, self.mask)
        if exception:
            line["exc"] = exception
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, mask: Callable[[str], str] = _unmasked) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.mask = mask  # the handler's SecretFilter's, for the traceback this formatter makes

    def format(self, record: logging.LogRecord) -> str:
        record.message = safe_message(record)
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        pairs = [_pair(n, record.__dict__[n]) for n in CONTEXT_FIELDS if record.__dict__.get(n) is not None]
        if pairs:
            text = f"{text} {' '.join(pairs)}"
        exception = _exception_text(record, self.mask)
        if exception:
            text = f"{text}\n{exception}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        return text


class Throttled:
    """A warning about something that comes in floods (slow clients, refused connections): the first occurrence is
    logged at once; later ones are counted and summed up in one line at most every ``interval`` seconds (flushed by
    the event loop when one is running, else by the next occurrence). ``message`` takes the count as ``%d``."""

    def __init__(self, logger: logging.Logger, message: str, interval: float = 60.0, **extra: object) -> None:
        self.logger, self.message, self.interval, self.extra = logger, message, interval, extra
        self.pending = 0
        self.quiet_until = 0.0
        self.flush_scheduled = False

    def add(self) -> None:
        self.pending += 1
        now = time.monotonic()
        if now >= self.quiet_until:
            self.flush()
        elif not self.flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self.flush_scheduled = True
            loop.call_later(self.quiet_until - now, self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.pending:
            self.logger.warning(self.message, self.pending, extra=self.extra)
            self.pending = 0
            self.quiet_until = time.monotonic() + self.interval


def secrets_of(settings: Settings) -> list[str]:
    return [
        settings.webhook_token,
        settings.rocketchat_auth_token,
        settings.rocketchat_password,
        settings.api_token,
        settings.external_queue_token,
        settings.metrics_token,
    ]


def configure(settings: Settings, stream: object = None) -> None:
    """Install one handler on the root logger (idempotent), for the web process, workers and CLI alike."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    secrets = SecretFilter(secrets_of(settings))
    handler.setFormatter(JsonFormatter(secrets.mask) if settings.log_format == "json" else TextFormatter(secrets.mask))
    handler.addFilter(secrets)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_omnibridge", False)]:
        root.removeHandler(old)
    handler._omnibridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
