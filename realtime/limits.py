"""Per-connection publish limits of PROTOCOL §8: the publish rate, and strikes.

The consumer keeps one ``PublishLimiter`` per connection and calls ``check(event)`` before a
publish reaches the service; after a ``rate_limited`` error it looks at ``should_close`` and,
when set, closes with 4008 (``realtime.protocol.CLOSE_POLICY``).

Strikes: a rejected publish is a strike. ``REALTIME_RATE_LIMIT_STRIKES`` (50) strikes within
``REALTIME_RATE_LIMIT_WINDOW`` (10 s) mean the client ignores ``rate_limited`` replies and
the connection is closed. A rejection costs the server almost nothing (no database, no
broadcast), so the threshold can be generous: a phone flushing an outbox queued during a
signal drop at the venue (say 80 frames at once: 40 pass on the burst, 40 are refused) is
not disconnected, while a client that keeps sending over the limit trips it within seconds
(at 100 frames/s: the burst lasts 0.5 s, then 4 frames in 5 are refused; closed after ~1.1 s).
"""

from __future__ import annotations

import time
from collections import deque

from django.conf import settings

from core import metrics
from realtime.errors import RealtimeError

# PROTOCOL §7: critical events are never rate-limited. The catalogue marks emergency.* as
# priority critical; matched by prefix so that a new emergency event is exempt from day one.
# The catalogue's critical events (PROTOCOL §5): named exactly, so that made-up names such
# as "emergency.bogus" cannot use the exemption to flood the database.
CRITICAL_EVENTS = frozenset({"emergency.raised", "emergency.resolved"})
# Tokens are floats: 0.05 s x 20/s may come to 0.9999999; that is a whole token.
_EPSILON = 1e-9


def is_critical(event: str) -> bool:
    """Whether an event name is a critical (never rate-limited) one."""
    return event in CRITICAL_EVENTS


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; each allowed action takes one."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        last = self._last
        if last is None or now > last:  # an earlier `now` (clock mix-up) adds nothing
            if last is not None:
                self._tokens = min(self.burst, self._tokens + (now - last) * self.rate)
            self._last = now

    def allow(self, now: float | None = None) -> bool:
        """Take a token if one is there (``now``: monotonic seconds; injected by tests)."""
        self._refill(time.monotonic() if now is None else now)
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens -= 1.0
            return True
        return False

    def retry_after(self, now: float | None = None) -> float:
        """Seconds until the next token (0 when one is there now)."""
        self._refill(time.monotonic() if now is None else now)
        missing = 1.0 - self._tokens
        return 0.0 if missing <= _EPSILON else missing / self.rate


class PublishLimiter:
    """One connection's publish rate limit (PROTOCOL §8: 20/s, burst 40), with strikes."""

    __slots__ = ("_bucket", "_strikes", "should_close", "strike_limit", "strike_window")

    def __init__(
        self,
        *,
        rate: float | None = None,
        burst: int | None = None,
        strikes: int | None = None,
        window: float | None = None,
    ) -> None:
        self._bucket = TokenBucket(
            settings.REALTIME_PUBLISH_RATE if rate is None else rate,
            settings.REALTIME_PUBLISH_BURST if burst is None else burst,
        )
        self.strike_limit: int = (
            settings.REALTIME_RATE_LIMIT_STRIKES if strikes is None else strikes
        )
        self.strike_window: float = (
            settings.REALTIME_RATE_LIMIT_WINDOW if window is None else window
        )
        # Times of the latest strikes; never longer than the limit.
        self._strikes: deque[float] = deque(maxlen=max(1, self.strike_limit))
        # Set once the client has been refused too often; the consumer then closes (4008).
        self.should_close = False

    def check(self, event: str, now: float | None = None) -> None:
        """Let a publish of ``event`` through, or raise RealtimeError("rate_limited")."""
        if is_critical(event):
            return  # never limited, and takes no token (PROTOCOL §7)
        if now is None:
            now = time.monotonic()
        if self._bucket.allow(now):
            return
        self._strike(now)
        metrics.rate_limited()
        retry_ms = max(1, round(self._bucket.retry_after(now) * 1000))
        raise RealtimeError(
            "rate_limited",
            f"more than {self._bucket.rate:g} publishes a second; retry in {retry_ms} ms",
            retry_after_ms=retry_ms,
        )

    def _strike(self, now: float) -> None:
        self._strikes.append(now)
        if (
            self.strike_limit > 0  # 0: never close
            and len(self._strikes) >= self.strike_limit
            and now - self._strikes[0] <= self.strike_window
        ):
            self.should_close = True
