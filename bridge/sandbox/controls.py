"""The sandbox's test-facing controls: injected faults, the rate limiter and the request log."""

from bridge.sandbox.faults import Fault, FaultTable
from bridge.sandbox.ratelimit import RateLimiter
from bridge.sandbox.requestlog import LoggedRequest, RequestLog


class Controls:
    def __init__(self, *, rate_limit_enabled: bool, rate_limit_calls: int, rate_limit_window_ms: int) -> None:
        # Rocket.Chat's API_Enable_Rate_Limiter, ..._Limit_Calls_Default, ..._Limit_Time_Default.
        self.rate_limit_enabled = rate_limit_enabled
        self.rate_limit_calls = rate_limit_calls
        self.rate_limit_window_ms = rate_limit_window_ms
        self.limiter = RateLimiter()
        self.faults = FaultTable()
        self.log = RequestLog()

    def inject(
        self,
        path_prefix: str,
        status: int | None = 503,
        count: int | None = None,
        seconds: float | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Answer requests under `path_prefix` with `status` (None: answer normally) after `delay`
        seconds, for the next `count` requests and/or `seconds` seconds (None: until cleared)."""
        return self.faults.inject(path_prefix, status=status, count=count, seconds=seconds, delay=delay)

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset_rate_limits(self) -> None:
        self.limiter.reset()

    def requests(self) -> list[LoggedRequest]:
        return self.log.entries()

    def log_lines(self) -> list[str]:
        """Every request so far as 'GET /api/v1/path > 200', in order of completion."""
        return self.log.lines()

    def calls(self, method: str, path: str) -> int:
        return self.log.count(method, path)

    def clear_log(self) -> None:
        self.log.clear()
