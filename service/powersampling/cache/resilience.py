"""Living with an unreliable dependency: a circuit breaker, a rate-limited log and URL redaction."""

from __future__ import annotations

import logging
import math
import time
import urllib.parse
from collections.abc import Callable


class CircuitBreaker:
    """Skips Redis for a cool-down after a failure, then lets one trial call through.

    The cool-down doubles with each failed trial (up to `max_cooldown_s`) and resets on success.
    Failures reported while the breaker is already open (calls that were in flight when Redis went
    away) do not lengthen it.
    """

    def __init__(
        self, cooldown_s: float, max_cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max(max_cooldown_s, cooldown_s)
        self._clock = clock
        self._open_until: float | None = None
        self._down_since: float | None = None
        self._trips = 0
        self._trial_in_flight = False

    @property
    def closed(self) -> bool:
        """Whether calls go through normally (no recent failure)."""
        return self._open_until is None

    def ready(self) -> bool:
        """Whether `allow` would let a call through now (without claiming the trial)."""
        return self._open_until is None or (not self._trial_in_flight and self._clock() >= self._open_until)

    @property
    def open_for_s(self) -> float:
        """Seconds left before the next trial (0 when closed or due)."""
        return 0.0 if self._open_until is None else max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """Whether a call may go to Redis now (when open, at most one trial after the cool-down)."""
        if self._open_until is None:
            return True
        if self._trial_in_flight or self._clock() < self._open_until:
            return False
        self._trial_in_flight = True
        return True

    def abandon(self) -> None:
        """A call let through ended without telling anything about Redis (it was cancelled)."""
        self._trial_in_flight = False

    def success(self) -> float | None:
        """Record a call that Redis answered; returns how long it was down if this closes the
        breaker (seconds since the first failure), else None."""
        down_for = None if self._down_since is None else self._clock() - self._down_since
        self._open_until = None
        self._down_since = None
        self._trips = 0
        self._trial_in_flight = False
        return down_for

    def failure(self) -> None:
        now = self._clock()
        if self._open_until is not None and not self._trial_in_flight and now < self._open_until:
            return
        cooldown = min(self.max_cooldown_s, self.cooldown_s * 2.0 ** min(self._trips, 30))
        if self._down_since is None:
            self._down_since = now
        self._trips += 1
        self._open_until = now + cooldown
        self._trial_in_flight = False


class RateLimitedLog:
    """Logs a message of each kind at most once per `interval_s`, counting the ones left out."""

    def __init__(self, log: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self._log = log
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, kind, message, *args)

    def info(self, kind: str, message: str, *args: object) -> None:
        self.log(logging.INFO, kind, message, *args)

    def log(self, level: int, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        last, suppressed = self._last.get(kind, (-math.inf, 0))
        if now - last < self._interval_s:
            self._last[kind] = (last, suppressed + 1)
            return
        self._last[kind] = (now, 0)
        if suppressed:
            message += " (%d similar message(s) not logged)"
            args = (*args, suppressed)
        self._log.log(level, message, *args)


def redact_url(url: str) -> str:
    """`url` with its password replaced by '***' (for logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


__all__ = ["CircuitBreaker", "RateLimitedLog", "redact_url"]
