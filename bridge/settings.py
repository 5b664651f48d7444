"""Configuration: read once from the environment into one frozen object that is passed to what needs it.

Nothing reads ``os.environ`` at import time; ``Settings.from_env(mapping)`` takes any mapping, so tests build
their own settings without touching the process environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bridge.errors import ConfigError, MissingConfig

STRATEGIES = ("least_loaded", "load_rotation", "previous_agent")

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


class Secret(str):
    """A string whose ``repr`` hides its value, so settings can be logged or shown in tracebacks."""

    def __repr__(self) -> str:
        return "Secret('********')" if self else "Secret('')"


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    rocketchat_url: str | None = None
    rocketchat_user_id: str | None = None
    rocketchat_auth_token: Secret = field(default=Secret(""))
    rocketchat_username: str | None = None
    rocketchat_password: Secret = field(default=Secret(""))
    webhook_token: Secret = field(default=Secret(""))
    insecure_dev: bool = False
    max_body_bytes: int = 2 * 1024 * 1024
    # The web process's HTTP limits (README, *Slow clients and connection limits*; bridge/webserver.py).
    web_header_timeout_seconds: int = 10
    web_body_timeout_seconds: int = 10
    web_max_connections: int = 1000
    web_keepalive_seconds: int = 100
    metrics_token: Secret = field(default=Secret(""))
    dedupe_ttl_seconds: int = 86_400
    queue_name: str = "bridge"
    job_retries: int = 5
    log_format: str = "text"
    log_level: str = "INFO"
    rocketchat_timeout: float = 10.0
    rocketchat_retries: int = 4
    rocketchat_calls_per_minute: int = 0  # 0: no cap of our own; Rocket.Chat's learned limits apply
    agent_source: str = "auto"
    accept_idle_agents: bool = False
    directory_ttl_seconds: float = 10.0
    directory_stale_seconds: float = 300.0
    departments_ttl_seconds: float = 300.0
    routing_strategy: str = "least_loaded"
    strategy_by_department: tuple[tuple[str, str], ...] = ()
    default_max_chats: int = 3
    routing_concurrency: int = 8
    previous_agent_window_seconds: int = 86_400
    api_token: Secret = field(default=Secret(""))
    external_queue_token: Secret = field(default=Secret(""))
    decision_retention_seconds: int = 7 * 86_400
    decision_noop_retention_seconds: int = 3600
    decision_max_records: int = 100_000
    decision_max_bytes: int = 8192
    voice_queue_max: int = 1000
    voice_queue_max_per_token: int = 100
    tick_seconds: int = 5
    load_reconcile_seconds: int = 300
    inquiry_reconcile_seconds: int = 30
    no_answer_seconds: int = 0
    no_answer_max_attempts: int = 2
    no_answer_fallback_department: str | None = None
    spool_dir: str = "var/spool"
    spool_max_bytes: int = 256 * 1024 * 1024
    # Bounds on Redis state (README, *Bounds*): lines per lane of the event log, chats in the routing queue.
    event_log_routing_max_lines: int = 100_000
    event_log_other_max_lines: int = 50_000
    waiting_max_chats: int = 10_000

    def strategy_for(self, department_id: str | None) -> str:
        return dict(self.strategy_by_department).get(department_id or "", self.routing_strategy)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        reader = _Reader(env)
        default = cls()
        settings = cls(
            redis_url=reader.url("REDIS_URL", schemes=("redis", "rediss", "unix")),
            host=reader.text("HOST") or default.host,
            port=reader.integer("PORT", default=default.port, low=1, high=65535),
            rocketchat_url=reader.url("ROCKETCHAT_URL", schemes=("http", "https")),
            rocketchat_user_id=reader.text("ROCKETCHAT_USER_ID"),
            rocketchat_auth_token=Secret(reader.text("ROCKETCHAT_AUTH_TOKEN") or ""),
            rocketchat_username=reader.text("ROCKETCHAT_USERNAME"),
            rocketchat_password=Secret(reader.text("ROCKETCHAT_PASSWORD") or ""),
            webhook_token=Secret(reader.text("ROCKETCHAT_WEBHOOK_TOKEN") or ""),
            insecure_dev=reader.boolean("BRIDGE_INSECURE_DEV"),
            max_body_bytes=reader.integer("WEBHOOK_MAX_BYTES", default=default.max_body_bytes, low=1024, high=64 << 20),
            web_header_timeout_seconds=reader.integer(
                "WEB_HEADER_TIMEOUT_SECONDS", default=default.web_header_timeout_seconds, low=1, high=120
            ),
            web_body_timeout_seconds=reader.integer(
                "WEB_BODY_TIMEOUT_SECONDS", default=default.web_body_timeout_seconds, low=1, high=300
            ),
            web_max_connections=reader.integer(
                "WEB_MAX_CONNECTIONS", default=default.web_max_connections, low=10, high=100_000
            ),
            web_keepalive_seconds=reader.integer(
                "WEB_KEEPALIVE_SECONDS", default=default.web_keepalive_seconds, low=1, high=3600
            ),
            metrics_token=Secret(reader.text("METRICS_TOKEN") or ""),
            dedupe_ttl_seconds=reader.integer(
                "DEDUPE_TTL_SECONDS", default=default.dedupe_ttl_seconds, low=60, high=30 * 86_400
            ),
            queue_name=reader.text("BRIDGE_QUEUE") or default.queue_name,
            job_retries=reader.integer("JOB_RETRIES", default=default.job_retries, low=0, high=100),
            log_format=reader.choice("LOG_FORMAT", ("text", "json"), default=default.log_format),
            log_level=reader.choice(
                "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), default=default.log_level, upper=True
            ),
            rocketchat_timeout=float(reader.integer("ROCKETCHAT_TIMEOUT_SECONDS", default=10, low=1, high=120)),
            rocketchat_retries=reader.integer("ROCKETCHAT_RETRIES", default=default.rocketchat_retries, low=0, high=10),
            rocketchat_calls_per_minute=reader.integer(
                "ROCKETCHAT_CALLS_PER_MINUTE", default=default.rocketchat_calls_per_minute, low=0, high=100_000
            ),
            agent_source=reader.choice("AGENT_SOURCE", ("auto", "available", "users"), default=default.agent_source),
            accept_idle_agents=reader.boolean("ACCEPT_IDLE_AGENTS"),
            directory_ttl_seconds=float(reader.integer("DIRECTORY_TTL_SECONDS", default=10, low=1, high=3600)),
            directory_stale_seconds=float(reader.integer("DIRECTORY_STALE_SECONDS", default=300, low=0, high=86_400)),
            departments_ttl_seconds=float(reader.integer("DEPARTMENTS_TTL_SECONDS", default=300, low=1, high=86_400)),
            routing_strategy=reader.choice("ROUTING_STRATEGY", STRATEGIES, default=default.routing_strategy),
            strategy_by_department=reader.pairs("ROUTING_STRATEGY_BY_DEPARTMENT", STRATEGIES),
            default_max_chats=reader.integer("DEFAULT_MAX_CHATS", default=default.default_max_chats, low=0, high=1000),
            routing_concurrency=reader.integer(
                "ROUTING_CONCURRENCY", default=default.routing_concurrency, low=1, high=64
            ),
            previous_agent_window_seconds=reader.integer(
                "PREVIOUS_AGENT_WINDOW_SECONDS", default=default.previous_agent_window_seconds, low=0, high=90 * 86_400
            ),
            api_token=Secret(reader.text("BRIDGE_API_TOKEN") or ""),
            external_queue_token=Secret(reader.text("ROCKETCHAT_EXTERNAL_QUEUE_TOKEN") or ""),
            decision_retention_seconds=reader.integer(
                "DECISION_RETENTION_SECONDS", default=default.decision_retention_seconds, low=60, high=365 * 86_400
            ),
            decision_noop_retention_seconds=reader.integer(
                "DECISION_NOOP_RETENTION_SECONDS",
                default=default.decision_noop_retention_seconds,
                low=60,
                high=365 * 86_400,
            ),
            decision_max_records=reader.integer(
                "DECISION_MAX_RECORDS", default=default.decision_max_records, low=100, high=10_000_000
            ),
            decision_max_bytes=reader.integer(
                "DECISION_MAX_BYTES", default=default.decision_max_bytes, low=2048, high=1 << 20
            ),
            voice_queue_max=reader.integer("VOICE_QUEUE_MAX", default=default.voice_queue_max, low=1, high=1_000_000),
            voice_queue_max_per_token=reader.integer(
                "VOICE_QUEUE_MAX_PER_TOKEN", default=default.voice_queue_max_per_token, low=1, high=1_000_000
            ),
            tick_seconds=reader.integer("TICK_SECONDS", default=default.tick_seconds, low=1, high=3600),
            load_reconcile_seconds=reader.integer(
                "LOAD_RECONCILE_SECONDS", default=default.load_reconcile_seconds, low=10, high=86_400
            ),
            inquiry_reconcile_seconds=reader.integer(
                "INQUIRY_RECONCILE_SECONDS", default=default.inquiry_reconcile_seconds, low=1, high=86_400
            ),
            no_answer_seconds=reader.integer("NO_ANSWER_SECONDS", default=0, low=0, high=86_400),
            no_answer_max_attempts=reader.integer(
                "NO_ANSWER_MAX_ATTEMPTS", default=default.no_answer_max_attempts, low=0, high=100
            ),
            no_answer_fallback_department=reader.text("NO_ANSWER_FALLBACK_DEPARTMENT"),
            spool_dir=reader.text("SPOOL_DIR") or default.spool_dir,
            spool_max_bytes=reader.integer("SPOOL_MAX_BYTES", default=default.spool_max_bytes, low=0, high=1 << 40),
            event_log_routing_max_lines=reader.integer(
                "EVENT_LOG_ROUTING_MAX_LINES", default=default.event_log_routing_max_lines, low=100, high=10_000_000
            ),
            event_log_other_max_lines=reader.integer(
                "EVENT_LOG_OTHER_MAX_LINES", default=default.event_log_other_max_lines, low=100, high=10_000_000
            ),
            waiting_max_chats=reader.integer(
                "WAITING_MAX_CHATS", default=default.waiting_max_chats, low=10, high=10_000_000
            ),
        )
        if settings.event_log_routing_max_lines < settings.event_log_other_max_lines:
            raise ConfigError(
                "EVENT_LOG_ROUTING_MAX_LINES",
                "must be at least EVENT_LOG_OTHER_MAX_LINES: the routing lane keeps the larger bound, so queued, "
                "taken, forwarded and closed events are the last to be refused",
            )
        settings.check_rocketchat_credentials()
        return settings

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def check_rocketchat_credentials(self) -> None:
        """Credentials come as a pair (user id + token, or username + password); half a pair is a mistake."""
        if bool(self.rocketchat_user_id) != bool(self.rocketchat_auth_token):
            missing = "ROCKETCHAT_AUTH_TOKEN" if self.rocketchat_user_id else "ROCKETCHAT_USER_ID"
            raise ConfigError(missing, "is required together with the other half of the personal access token")
        if bool(self.rocketchat_username) != bool(self.rocketchat_password):
            missing = "ROCKETCHAT_PASSWORD" if self.rocketchat_username else "ROCKETCHAT_USERNAME"
            raise ConfigError(missing, "is required together with the other half of the login")

    def require_webhook_token(self) -> None:
        """The web process refuses to start without a webhook token unless the insecure dev flag is set."""
        if not self.webhook_token and not self.insecure_dev:
            raise ConfigError(
                "ROCKETCHAT_WEBHOOK_TOKEN",
                "is required: set it to the value of Rocket.Chat's Livechat_secret_token "
                "(or set BRIDGE_INSECURE_DEV=1 to accept unauthenticated webhooks in development)",
            )

    def require_worker(self) -> None:
        """A worker needs Redis and a Rocket.Chat it may call. Without Rocket.Chat every job would end "successfully"
        having routed nothing while chats pile up, so the worker refuses to start; every missing variable is named
        in one message, so one restart after setting them all is enough."""
        self.check_rocketchat_credentials()
        missing = ([] if self.redis_url else ["REDIS_URL"]) + self._missing_rocketchat()
        if missing:
            raise MissingConfig(missing, _needed_by_a_worker(missing))

    def require_rocketchat(self) -> None:
        """The Rocket.Chat part of ``require_worker``, for ``omnibridge up`` (which may bring its own Redis)."""
        self.check_rocketchat_credentials()
        if missing := self._missing_rocketchat():
            raise MissingConfig(missing, _needed_by_a_worker(missing))

    def _missing_rocketchat(self) -> list[str]:
        missing = [] if self.rocketchat_url else ["ROCKETCHAT_URL"]
        has_token = bool(self.rocketchat_user_id and self.rocketchat_auth_token)
        has_login = bool(self.rocketchat_username and self.rocketchat_password)
        if not (has_token or has_login):
            missing += ["ROCKETCHAT_USER_ID", "ROCKETCHAT_AUTH_TOKEN"]
        return missing

    def require_redis(self) -> str:
        if not self.redis_url:
            raise ConfigError("REDIS_URL", "is required (for example redis://127.0.0.1:6379/0)")
        return self.redis_url


def _needed_by_a_worker(missing: list[str]) -> str:
    """The rest of the message after the variables' names: why, the login alternative, where to read more."""
    text = f"required by a worker, which cannot route a chat without {'it' if len(missing) == 1 else 'them'}"
    if "ROCKETCHAT_AUTH_TOKEN" in missing:
        text += (
            " (ROCKETCHAT_USERNAME and ROCKETCHAT_PASSWORD may replace ROCKETCHAT_USER_ID and ROCKETCHAT_AUTH_TOKEN)"
        )
    if missing != ["REDIS_URL"]:
        text += "; see the README, 'The Rocket.Chat account the bridge needs'"
    return text


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        value = self.text(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in schemes or (parts.scheme != "unix" and not parts.hostname):
            raise ConfigError(name, f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value.rstrip("/") if parts.scheme in ("http", "https") else value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(name, f"must be a whole number, got {value!r}") from None
        if not low <= number <= high:
            raise ConfigError(name, f"must be between {low} and {high}, got {number}")
        return number

    def pairs(self, name: str, choices: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """``key=value,key=value`` (for example department id = strategy)."""
        value = self.text(name)
        if value is None:
            return ()
        result = []
        for item in value.split(","):
            key, sep, choice = (part.strip() for part in item.partition("="))
            if not sep or not key or choice not in choices:
                raise ConfigError(
                    name, f"must be department=strategy pairs separated by commas, strategies: {', '.join(choices)}"
                )
            result.append((key, choice))
        return tuple(result)

    def boolean(self, name: str) -> bool:
        value = (self.env.get(name) or "").strip().lower()
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS:
            return False
        raise ConfigError(name, f"must be one of 1/0, true/false, yes/no, on/off, got {value!r}")

    def choice(self, name: str, choices: tuple[str, ...], default: str, upper: bool = False) -> str:
        value = self.text(name)
        if value is None:
            return default
        value = value.upper() if upper else value.lower()
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value
