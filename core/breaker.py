"""A small circuit breaker for calls to a dependency that may be down (Redis first).

closed → (``failure_threshold`` failures in a row) → open → (after ``reset_timeout``) →
half-open: one probe call goes through; its success closes the breaker, its failure
opens it again. While open (and while the probe is in flight) calls raise
``CircuitOpen`` at once instead of waiting on a dead socket.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitOpen(Exception):
    """Raised instead of calling the dependency while the breaker is open."""


class CircuitBreaker:
    """Thread-safe breaker usable from sync code (``call``) and asyncio (``acall``)."""

    def __init__(
        self,
        *,
        name: str = "breaker",
        failure_threshold: int | Callable[[], int] = 3,
        reset_timeout: float = 5.0,
        failure_exceptions: tuple[type[BaseException], ...] = (Exception,),
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        # A number, or a function giving it when a failure is counted (a threshold that
        # depends on the day: lower in wedding-day mode).
        self._threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.failure_exceptions = failure_exceptions
        self.on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def failure_threshold(self) -> int:
        """Failures in a row that open the breaker (now)."""
        threshold = self._threshold
        return threshold() if callable(threshold) else threshold

    @property
    def state(self) -> str:
        """'closed', 'open' or 'half-open' (an open breaker past its cool-down reads half-open)."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout:
                return HALF_OPEN
            return self._state

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` through the breaker; raises ``CircuitOpen`` without calling it when open."""
        self._before()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._after_error(exc)
            raise
        self._success()
        return result

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args)`` through the breaker; the async twin of ``call``."""
        self._before()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._after_error(exc)
            raise
        self._success()
        return result

    def reset(self) -> None:
        """Close the breaker and forget failures (tests, admin action)."""
        with self._lock:
            self._failures = 0
            self._probing = False
            change = self._set(CLOSED)
        self._notify(change)

    # --- internals -------------------------------------------------------------------------

    def _before(self) -> None:
        change = None
        with self._lock:
            if self._state == OPEN:
                if self._clock() - self._opened_at < self.reset_timeout:
                    raise CircuitOpen(f"{self.name} is open")
                change = self._set(HALF_OPEN)
            if self._state == HALF_OPEN:
                if self._probing:  # one probe at a time; the others fail fast
                    raise CircuitOpen(f"{self.name} is half-open, probe in flight")
                self._probing = True
        self._notify(change)

    def _success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probing = False
            change = self._set(CLOSED)
        self._notify(change)

    def _after_error(self, exc: BaseException) -> None:
        if not isinstance(exc, self.failure_exceptions):
            with self._lock:  # not the dependency's fault (e.g. cancellation): no verdict
                self._probing = False
            return
        threshold = self.failure_threshold  # outside the lock: it may read a setting
        with self._lock:
            self._probing = False
            self._failures += 1
            change = None
            if self._state == HALF_OPEN or self._failures >= threshold:
                self._opened_at = self._clock()
                change = self._set(OPEN)
        self._notify(change)

    def _set(self, new: str) -> tuple[str, str] | None:
        old, self._state = self._state, new
        return (old, new) if old != new else None

    def _notify(self, change: tuple[str, str] | None) -> None:
        if change is None:
            return
        old, new = change
        logger.warning("circuit breaker %s: %s -> %s", self.name, old, new)
        if self.on_change is not None:
            try:
                self.on_change(old, new)
            except Exception:  # a metrics hook must never break the call it observes
                logger.exception("circuit breaker %s: on_change hook failed", self.name)


# --- the process's Redis breakers ------------------------------------------------------

# What counts as "Redis is down" (a refusal, a reset, a timeout); anything else is a bug
# in the caller and leaves the breaker alone.
REDIS_FAILURES: tuple[type[BaseException], ...] = (OSError, TimeoutError)
try:
    import redis as _redis

    REDIS_FAILURES = (*REDIS_FAILURES, _redis.RedisError)
except ImportError:  # pragma: no cover - redis is a requirement
    pass

_breakers: dict[str, CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def redis_breaker(name: str) -> CircuitBreaker:
    """The process-wide breaker of one use of Redis ("channel-layer", "presence", ...).

    Each use has its own breaker, so a failing Lua script cannot cut off the channel
    layer; all of them open together when Redis is down. Thresholds come from the
    settings REDIS_BREAKER_FAILURES and REDIS_BREAKER_RESET.
    """
    with _breakers_lock:
        breaker = _breakers.get(name)
        if breaker is None:
            from django.conf import settings

            breaker = _breakers[name] = CircuitBreaker(
                name=name,
                failure_threshold=settings.REDIS_BREAKER_FAILURES,
                reset_timeout=settings.REDIS_BREAKER_RESET,
                failure_exceptions=REDIS_FAILURES,
                on_change=functools.partial(_report_change, name),
            )
        return breaker


def _database_threshold() -> int:
    """Failures in a row that open the database breaker: ``DATABASE_BREAKER_FAILURES``,
    ``DATABASE_BREAKER_FAILURES_WEDDING_DAY`` (lower: on a wedding day a failing database
    is given up on sooner) while wedding-day mode is on or cannot be read."""
    from django.conf import settings

    from core import switches

    try:
        wedding_day = bool(switches.state("wedding_day_mode")["enabled"])
    except Exception:  # the database (and the cached switch) unreachable: assume the worst
        wedding_day = True
    if wedding_day:
        return settings.DATABASE_BREAKER_FAILURES_WEDDING_DAY
    return settings.DATABASE_BREAKER_FAILURES


def database_breaker() -> CircuitBreaker:
    """The process-wide breaker of the realtime path's database calls
    (``core.db.in_db_thread``): after the threshold of connection failures in a row, calls
    fail at once for ``DATABASE_BREAKER_RESET`` seconds instead of each taking a database
    thread for the pool's or the connection's timeout, so a failing database cannot pin
    every thread; then one call probes. Only failures to reach the database count
    (``OperationalError``, ``InterfaceError``); a constraint violation is the caller's."""
    with _breakers_lock:
        breaker = _breakers.get("database")
        if breaker is None:
            from django.conf import settings
            from django.db import InterfaceError, OperationalError

            breaker = _breakers["database"] = CircuitBreaker(
                name="database",
                failure_threshold=_database_threshold,
                reset_timeout=settings.DATABASE_BREAKER_RESET,
                failure_exceptions=(OperationalError, InterfaceError),
                on_change=functools.partial(_report_change, "database"),
            )
        return breaker


# Who is told when a Redis breaker changes state: ``listener(name, new_state)``. Monitoring
# adds the state gauge and the opens counter in its ``ready()`` (docs/monitoring.md).
_change_listeners: list[Callable[[str, str], None]] = []


def add_change_listener(listener: Callable[[str, str], None]) -> None:
    """Call ``listener(name, new_state)`` on every state change of a Redis breaker."""
    if listener not in _change_listeners:
        _change_listeners.append(listener)


def _report_change(name: str, old: str, new: str) -> None:
    """The Redis breakers' hook: tell the listeners; a failing listener never breaks it."""
    for listener in list(_change_listeners):
        try:
            listener(name, new)
        except Exception:
            logger.exception("breaker listener %r failed", listener)


def breaker_states() -> dict[str, str]:
    """``{name: state}`` of every Redis breaker this process has used."""
    with _breakers_lock:
        breakers = dict(_breakers)
    return {name: breaker.state for name, breaker in sorted(breakers.items())}


def breakers_reset() -> None:
    """Close every breaker (tests)."""
    with _breakers_lock:
        breakers = list(_breakers.values())
    for breaker in breakers:
        breaker.reset()
