"""Frame limits of PROTOCOL §8: per connection (with strikes) and per user (shared).

Two layers, both token buckets:

* ``PublishLimiter``, one per connection (the consumer keeps it): the connection's publish
  rate (``REALTIME_PUBLISH_RATE``/``_BURST``) and its strikes. After a ``rate_limited``
  error the consumer looks at ``should_close`` and, when set, closes with 4008
  (``realtime.protocol.CLOSE_POLICY``). ``acheck(event, user_id)`` is the consumer's call:
  the connection's bucket, then the user's.
* ``UserLimits`` (``get_user_limits()``), per user: one budget shared by all of a user's
  connections, the HTTP publish API (``POST /api/weddings/<id>/events``) and every server
  process. In Redis when ``REDIS_URL`` is set (a Lua token bucket on Redis's clock, behind
  the "rate-limits" circuit breaker); in this process's memory otherwise, and while Redis
  is unreachable (limits then hold per process: degraded, never closed). Ordinary events
  use ``REALTIME_USER_PUBLISH_RATE``/``_BURST``; critical events (``emergency.*``) have
  their own, smaller budget (``REALTIME_CRITICAL_PUBLISH_RATE``/``_BURST``, 1/s, burst 5):
  a flood of ordinary events cannot starve an emergency, and emergencies cannot be used to
  flood (each opens an alert and e-mails the planner). A refused critical event is never
  dropped silently: it gets ``rate_limited`` with ``retry_after_ms`` like any publish.
  Realtime tokens (``POST /api/realtime/token``) have a per-user budget of their own.
* Per-user budgets for the other costly frames (``FRAME_BUDGETS``, ``UserLimits.check_frame``,
  called through ``PublishLimiter.acheck_frame`` so a refusal is a strike): ``subscribe``
  (one token per topic a subscribe adds to the connection, taken before the access check),
  ``replay`` (one token per event a subscribe with ``since`` replays, taken once the
  replay's size is known and before any of it is sent; refused: the frame's new topics are
  dropped again), ``presence`` and ``ack`` (one per frame). A cost above a budget's burst
  (a 100-topic resubscribe, a replay of thousands of events) passes on a full bucket and
  leaves it in debt, so a single reconnect is never refused however large, while a storm of
  them is held to the budget's rate.

Strikes: a rejected publish is a strike. ``REALTIME_RATE_LIMIT_STRIKES`` (50) strikes within
``REALTIME_RATE_LIMIT_WINDOW`` (10 s) mean the client ignores ``rate_limited`` replies and
the connection is closed. A rejection costs the server almost nothing (no database, no
broadcast), so the threshold can be generous: a phone flushing an outbox queued during a
signal drop at the venue (say 80 frames at once: 40 pass on the burst, 40 are refused) is
not disconnected, while a client that keeps sending over the limit trips it within seconds
(at 100 frames/s: the burst lasts 0.5 s, then 4 frames in 5 are refused; closed after ~1.1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable
from typing import Any

from cachetools import TTLCache
from django.conf import settings

from core import db as db_class
from core import metrics
from core.breaker import CircuitOpen, redis_breaker
from core.redis import Script as LuaScript
from core.redis import shared_client as get_redis
from realtime.errors import RealtimeError
from weddings.models import Supplier

logger = logging.getLogger(__name__)

# The catalogue's critical events (PROTOCOL §5), named exactly, so that made-up names such
# as "emergency.bogus" cannot use the critical budget. PROTOCOL §7: they have a budget of
# their own (per user), apart from ordinary events.
CRITICAL_EVENTS = frozenset({"emergency.raised", "emergency.resolved"})
# Tokens are floats: 0.05 s x 20/s may come to 0.9999999; that is a whole token.
_EPSILON = 1e-9


def is_critical(event: str) -> bool:
    """Whether an event name is a critical one (its own budget; PROTOCOL §7)."""
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

    def allow(self, now: float | None = None, cost: float = 1.0, need: float | None = None) -> bool:
        """Take ``cost`` tokens if they are there (``now``: monotonic seconds; injected by
        tests). A cost above the burst passes on a full bucket and leaves it in debt
        (below zero): later actions wait until the debt is paid back. ``need``: the tokens
        that must be there (default: the cost); ``cost=0, need=1`` asks whether a
        budget is spent without taking anything."""
        self._refill(time.monotonic() if now is None else now)
        if self._tokens >= min(cost if need is None else need, self.burst) - _EPSILON:
            self._tokens -= cost
            return True
        return False

    def retry_after(self, now: float | None = None, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there (0 when they are there now)."""
        self._refill(time.monotonic() if now is None else now)
        missing = min(cost, self.burst) - self._tokens
        return 0.0 if missing <= _EPSILON else missing / self.rate


def rate_limited(
    what: str, rate: float, retry_after: float, per: str = "a second"
) -> RealtimeError:
    """The ``rate_limited`` error (PROTOCOL §8) with ``retry_after_ms``; counted."""
    metrics.rate_limited()
    retry_ms = max(1, round(retry_after * 1000))
    return RealtimeError(
        "rate_limited",
        f"more than {rate:g} {what} {per}; retry in {retry_ms} ms",
        retry_after_ms=retry_ms,
    )


# Each user's frames on this process, across their connections (``check_any``); an idle
# bucket evicted is a full one again, which is what it would be.
_user_frames: TTLCache[int, TokenBucket] = TTLCache(100_000, 600)


class UserSlots:
    """At most ``size`` frames of one user that cost the server work (a database thread,
    Redis calls, a replay) handled at once in this process, across their connections;
    the next waits for a slot.

    Budgets bound how *much* a user gets through; this bounds how much of the process it
    holds *at once*. Each connection handles its frames one after the other, so without it
    a member with 20 connections has 20 subscribes, publishes or acks in flight together:
    a burst that fits their budgets still fills the database threads and the event loop
    while other members' live events wait behind it (``loadtest hostile-member``; docs/
    benchmarks.md). With one slot (the default) a flood gets as much through as before,
    one frame at a time. A client that sends one frame at a time never waits; a planner's
    phone and laptop publishing together wait a few milliseconds for each other. Waiting
    frames belong to that user's connections only: nobody else queues behind them. A
    subscribe holds the slot until it is answered, not while its replay is written (a slow
    phone's replay never holds up the user's other frames).
    """

    __slots__ = ("_held", "size")

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        # user -> [semaphore, frames holding or waiting]: present only while it has some.
        self._held: dict[Hashable, list] = {}

    @contextlib.asynccontextmanager
    async def hold(self, user_id: Hashable) -> AsyncIterator[None]:
        entry = self._held.get(user_id)
        if entry is None:
            entry = self._held[user_id] = [asyncio.Semaphore(self.size), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._held[user_id]

    def busy(self, user_id: Hashable) -> int:
        """Frames of the user holding or waiting for a slot (tests, metrics)."""
        entry = self._held.get(user_id)
        return entry[1] if entry is not None else 0


_user_slots: UserSlots | None = None


def user_slots() -> UserSlots:
    """This process's ``UserSlots`` (``REALTIME_USER_CONCURRENT_FRAMES`` each)."""
    global _user_slots
    size = settings.REALTIME_USER_CONCURRENT_FRAMES
    if _user_slots is None or _user_slots.size != max(1, size):
        _user_slots = UserSlots(size)
    return _user_slots


class PublishLimiter:
    """One connection's publish rate limit (PROTOCOL §8: 20/s, burst 40) and frame rate
    limit (every frame, pings included: ``REALTIME_FRAME_RATE``/``_BURST``), with strikes.
    Both are in this process's memory: a flood is refused here before it costs a Redis
    call, a database thread or a socket write beyond the error."""

    __slots__ = ("_bucket", "_frames", "_strikes", "should_close", "strike_limit",
                 "strike_window")  # fmt: skip

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
        self._frames = TokenBucket(settings.REALTIME_FRAME_RATE, settings.REALTIME_FRAME_BURST)
        self.strike_limit: int = (
            settings.REALTIME_RATE_LIMIT_STRIKES if strikes is None else strikes
        )
        self.strike_window: float = (
            settings.REALTIME_RATE_LIMIT_WINDOW if window is None else window
        )
        # Times of the latest strikes, never longer than the limit; made by the first strike
        # (a deque is ~0.7 KB, and most connections never have one: ADR 0035).
        self._strikes: deque[float] | None = None
        # Set once the client has been refused too often; the consumer then closes (4008).
        self.should_close = False

    def check_any(self, user_id: int | None = None, now: float | None = None) -> None:
        """Any frame of the connection: let it through, or raise ``rate_limited`` (a
        strike). Also the user's frames on this process, across their connections
        (``REALTIME_USER_FRAME_RATE``): twenty connections cannot send twenty bursts."""
        if now is None:
            now = time.monotonic()
        if self._frames.allow(now):
            if user_id is None:
                return
            bucket = _user_frames.get(user_id)
            if bucket is None:
                bucket = _user_frames[user_id] = TokenBucket(
                    settings.REALTIME_USER_FRAME_RATE, settings.REALTIME_USER_FRAME_BURST
                )
            if bucket.allow(now):
                return
            self._strike(now)
            raise rate_limited("frames", bucket.rate, bucket.retry_after(now))
        self._strike(now)
        raise rate_limited("frames", self._frames.rate, self._frames.retry_after(now))

    def check(self, event: str, now: float | None = None) -> None:
        """The connection's own limit: let a publish of ``event`` through, or raise
        RealtimeError("rate_limited") (a strike). A critical event takes no token from the
        connection's bucket: its limit is the user's critical budget (``acheck``)."""
        if is_critical(event):
            return
        if now is None:
            now = time.monotonic()
        if self._bucket.allow(now):
            return
        self._strike(now)
        raise rate_limited("publishes", self._bucket.rate, self._bucket.retry_after(now))

    async def acheck(
        self, event: str, user_id: int, now: float | None = None, size: int = 0
    ) -> None:
        """The consumer's check: the connection's limit, then the user's budgets (shared
        by the user's connections, the HTTP API and every process): events, and the bytes
        of ``size`` (the frame). A refusal by either is a strike of this connection."""
        self.check(event, now)
        try:
            await get_user_limits().check_publish(user_id, event, size)
        except RealtimeError:
            self._strike(time.monotonic() if now is None else now)
            raise

    async def acheck_frame(
        self, budget: str, user_id: int, cost: int = 1, now: float | None = None
    ) -> None:
        """The user's budget for a subscribe (``"subscribe"``: topics, ``"replay"``:
        replayed events), ``"presence"`` or ``"ack"`` frame (``FRAME_BUDGETS``): shared
        by the user's connections and every process; a refusal is a strike of this
        connection, as for publishes."""
        try:
            await get_user_limits().check_frame(budget, user_id, cost)
        except RealtimeError:
            self._strike(time.monotonic() if now is None else now)
            raise

    async def acheck_spent(
        self, budget: str, user_id: int, need: int = 1, now: float | None = None
    ) -> None:
        """``UserLimits.check_frame_spent``; a refusal is a strike of this connection."""
        try:
            await get_user_limits().check_frame_spent(budget, user_id, need)
        except RealtimeError:
            self._strike(time.monotonic() if now is None else now)
            raise

    def _strike(self, now: float) -> None:
        if self._strikes is None:
            self._strikes = deque(maxlen=max(1, self.strike_limit))
        self._strikes.append(now)
        if (
            self.strike_limit > 0  # 0: never close
            and len(self._strikes) >= self.strike_limit
            and now - self._strikes[0] <= self.strike_window
        ):
            self.should_close = True


# --- per user, shared ---------------------------------------------------------------------

# KEYS[1]: the bucket (a hash: tokens, ts in s). ARGV: rate per s, burst, cost (tokens taken;
# 1 when absent). On Redis's clock, so every process agrees. Returns {1, 0} when the tokens
# were taken, else {0, ms until they are there}. As ``TokenBucket.allow``: a cost above the
# burst passes on a full bucket and leaves it in debt (below zero).
_TAKE = LuaScript(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3] or '1')
local need = math.min(tonumber(ARGV[4] or ARGV[3] or '1'), burst)
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local allowed = 0
local wait = 0
if tokens >= need - 1e-9 then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((need - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - math.min(tokens, 0)) / rate * 1000) + 1000)
return {allowed, wait}
"""
)

# The per-user budgets of frames other than publish (PROTOCOL §8): budget -> (what the
# rate_limited message counts, the settings' prefix: <prefix>_RATE per s, <prefix>_BURST).
# A subscribe takes one "subscribe" token per topic it adds to the connection, then, when
# it replays, one "replay" token per event replayed; presence and ack frames take one each.
FRAME_BUDGETS: dict[str, tuple[str, str]] = {
    "subscribe": ("topics subscribed", "REALTIME_USER_SUBSCRIBE"),
    "replay": ("events replayed", "REALTIME_USER_REPLAY"),
    "presence": ("presence requests", "REALTIME_USER_PRESENCE"),
    "publish_bytes": ("bytes published", "REALTIME_USER_PUBLISH_BYTES"),
    "ack": ("acks", "REALTIME_USER_ACK"),
    # A wedding's snapshot or page state over HTTP (GET /api/weddings/<id>/, the web
    # page's state): served from the cache, but not for free, and a client reloads one
    # only after a gap it could not fill.
    "snapshot": ("snapshots", "REALTIME_USER_SNAPSHOT"),
    # An API key's publishes (ADR 0024), per key (its id, not a user's): a backend's
    # budget of its own, every event type alike.
    "api_key_publish": ("publishes", "REALTIME_API_KEY_PUBLISH"),
}

# How many local buckets a process keeps, and how long (s): an evicted bucket starts full
# again, which is what an idle one is anyway.
_LOCAL_BUCKETS = 100_000
_LOCAL_TTL_S = 3600


class UserLimits:
    """Per-user budgets: in Redis (``url``) shared by every process, else (and while Redis
    is unreachable) in this process's memory."""

    def __init__(self, url: str | None, key_prefix: str = "wedsync") -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.breaker = redis_breaker("rate-limits") if url else None
        self._local: TTLCache[tuple[str, int], TokenBucket] = TTLCache(_LOCAL_BUCKETS, _LOCAL_TTL_S)
        # What Redis refused, per (budget, user): (until, units, rate, burst). Before
        # ``until`` (this process's monotonic clock) the bucket cannot hold ``units``
        # tokens: it refills at ``rate`` from what Redis saw, and taking only lowers it. A
        # frame needing as many or more is refused here, as Redis would refuse it, without
        # the round trip: a flooding member's refused frames cost the event loop no Redis
        # call (ADR 0038).
        self._refused: TTLCache[tuple[str, int], tuple[float, int, float, int]] = TTLCache(
            _LOCAL_BUCKETS, _LOCAL_TTL_S
        )

    def key(self, budget: str, user_id: int) -> str:
        return f"{self.key_prefix}:rl:{budget}:{user_id}"

    async def take(
        self,
        budget: str,
        user_id: int,
        rate: float,
        burst: int,
        cost: int = 1,
        need: int | None = None,
    ) -> float:
        """Take ``cost`` tokens from ``user_id``'s ``budget`` (when ``need`` of them, by
        default the cost, are there): 0 when taken, else the seconds until they are."""
        args = [rate, burst, cost] if need is None else [rate, burst, cost, need]
        if self.breaker is not None:
            units = cost if need is None else need
            sent = time.monotonic()
            refused = self._refused.get((budget, user_id))
            if refused is not None:
                until, least, was_rate, was_burst = refused
                if sent < until and units >= least and (was_rate, was_burst) == (rate, burst):
                    return max(0.001, until - sent)
            try:
                allowed, wait_ms = await self.breaker.acall(
                    _TAKE, get_redis(self.url), [self.key(budget, user_id)], args
                )
            except CircuitOpen:
                pass
            except Exception:
                logger.warning("rate limits: Redis unreachable; limiting in this process")
            else:
                if int(allowed):
                    return 0.0
                wait = max(0.001, int(wait_ms) / 1000)
                # Redis rounds the wait up to a whole ms and answered after ``sent``: the
                # bucket holds fewer than ``units`` until at least sent + wait - 1 ms (a
                # wait of a ms or two leaves nothing worth keeping).
                if wait > 0.002:
                    self._refused[(budget, user_id)] = (sent + wait - 0.001, units, rate, burst)
                return wait
        return self._take_local(budget, user_id, rate, burst, cost, need)

    def _take_local(
        self,
        budget: str,
        user_id: int,
        rate: float,
        burst: int,
        cost: int = 1,
        need: int | None = None,
    ) -> float:
        bucket = self._local.get((budget, user_id))
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._local[(budget, user_id)] = TokenBucket(rate, burst)
        now = time.monotonic()
        if bucket.allow(now, cost, need):
            return 0.0
        return max(0.001, bucket.retry_after(now, cost if need is None else need))

    async def check_publish(self, user_id: int, event: str, size: int = 0) -> None:
        """Raise ``rate_limited`` when ``user_id`` is over its publish budget for ``event``
        (critical events: the critical budget), or, for an ordinary event, over its
        budget of bytes published (``size``: the frame or request body). Every subscriber
        receives every byte of a wedding's events in order: bytes, not events, are what a
        burst of large messages costs everyone else."""
        if is_critical(event):
            budget, what = "critical", "critical publishes"
            rate = settings.REALTIME_CRITICAL_PUBLISH_RATE
            burst = settings.REALTIME_CRITICAL_PUBLISH_BURST
        else:
            budget, what = "publish", "publishes"
            rate = settings.REALTIME_USER_PUBLISH_RATE
            burst = settings.REALTIME_USER_PUBLISH_BURST
        wait = await self.take(budget, user_id, rate, burst)
        if wait:
            raise rate_limited(what, rate, wait)
        if size > 0 and not is_critical(event):
            await self.check_frame("publish_bytes", user_id, size)

    async def check_frame(self, budget: str, user_id: int, cost: int = 1) -> None:
        """Raise ``rate_limited`` when ``user_id`` is over its ``budget`` (a key of
        ``FRAME_BUDGETS``) for ``cost`` units; a cost of 0 takes nothing."""
        if cost <= 0:
            return
        what, prefix = FRAME_BUDGETS[budget]
        rate = getattr(settings, f"{prefix}_RATE")
        wait = await self.take(budget, user_id, rate, getattr(settings, f"{prefix}_BURST"), cost)
        if wait:
            raise rate_limited(what, rate, wait)

    async def check_frame_spent(self, budget: str, user_id: int, need: int = 1) -> None:
        """Raise ``rate_limited`` when ``user_id``'s ``budget`` holds fewer than ``need``
        units (at most its burst: a full bucket always passes); takes nothing. Asked
        before costly work whose exact cost is known only after it (a replay), with what
        it is expected to cost: a budget that could not pay for it is refused without
        doing the work that the take after it would refuse anyway."""
        what, prefix = FRAME_BUDGETS[budget]
        rate = getattr(settings, f"{prefix}_RATE")
        burst = getattr(settings, f"{prefix}_BURST")
        wait = await self.take(budget, user_id, rate, burst, cost=0, need=max(1, need))
        if wait:
            raise rate_limited(what, rate, wait)

    async def holds(self, budget: str, user_id: int, units: int) -> bool:
        """Whether ``user_id``'s ``budget`` holds ``units`` (at most its burst: a full
        bucket holds anything); takes nothing, and a "no" is no refusal of anything."""
        _, prefix = FRAME_BUDGETS[budget]
        rate = getattr(settings, f"{prefix}_RATE")
        burst = getattr(settings, f"{prefix}_BURST")
        return await self.take(budget, user_id, rate, burst, cost=0, need=max(1, units)) == 0

    async def check_token_issue(self, user_id: int) -> None:
        """Raise ``rate_limited`` when ``user_id`` asks for realtime tokens too often."""
        rate = settings.REALTIME_TOKEN_ISSUE_PER_MINUTE / 60
        wait = await self.take("token", user_id, rate, settings.REALTIME_TOKEN_ISSUE_BURST)
        if wait:
            raise rate_limited(
                "tokens", settings.REALTIME_TOKEN_ISSUE_PER_MINUTE, wait, per="a minute"
            )

    def reset_local(self) -> None:
        """Forget this process's buckets (tests)."""
        self._local.clear()


_limits: dict[tuple[str, str], UserLimits] = {}


def get_user_limits() -> UserLimits:
    """The process's per-user limits for the configured Redis (or none); keys start with
    CACHE_NAMESPACE, so deployments sharing a Redis keep apart."""
    url, prefix = settings.REDIS_URL or "", settings.CACHE_NAMESPACE
    limits = _limits.get((url, prefix))
    if limits is None:
        limits = _limits[(url, prefix)] = UserLimits(url or None, prefix)
    return limits


def reset_user_limits() -> None:
    """Forget every per-user budget of this process (tests); Redis keys expire by themselves."""
    for limits in _limits.values():
        limits.reset_local()


# --- priority under overload (docs/adr/0031-priority-under-overload.md) -------------------

# The scheduling classes of events, most urgent first. "critical": what must reach the day's
# people first (the catalogue's critical events, emergencies, and the timeline's changes);
# "ordinary": every other event. Separate from ``is_critical``, which picks the *rate
# budget*: a timeline change is urgent to deliver, but takes the ordinary publish budget.
# Only catalogue names: a made-up "timeline.bogus" is refused in a database thread, and must
# not jump the queue on its way there.
CRITICAL_PREFIXES = ("emergency.", "timeline.")
_critical_events: frozenset[str] | None = None


def event_class(event: str) -> str:
    """Class "critical" (emergencies, timeline changes of the catalogue) or "ordinary"."""
    global _critical_events
    if _critical_events is None:
        from .catalogue import CATALOGUE  # the catalogue imports the domain: on first use

        _critical_events = frozenset(
            name
            for name, spec in CATALOGUE.items()
            if spec.priority == "critical" or name.startswith(CRITICAL_PREFIXES)
        )
    return "critical" if event in _critical_events else "ordinary"


def publish_priority(event: str) -> int:
    """The database-thread class of a publish of ``event`` (``core.db``)."""
    return db_class.CRITICAL if event_class(event) == "critical" else db_class.ORDINARY


def category_rank(categories: set[str] | frozenset[str], *, staff: bool = False) -> int:
    """A user's place in ``REALTIME_CATEGORY_PRIORITY`` (0: first) by their best supplier
    category; past the list (its length) for everyone else. Staff rank first: whoever
    runs the platform on the day must get in."""
    order = [c.strip() for c in settings.REALTIME_CATEGORY_PRIORITY if c.strip()]
    if staff:
        return 0
    ranks = [order.index(c) for c in categories if c in order]
    return min(ranks, default=len(order))


def supplier_rank(user: Any, suppliers: tuple[int, ...]) -> int:
    """``category_rank`` of a connecting user (in a database thread: one query, asked only
    near the process's connection cap)."""
    categories = set(
        Supplier.objects.filter(pk__in=suppliers).values_list("category", flat=True).order_by()
    )
    return category_rank(categories, staff=bool(getattr(user, "is_staff", False)))


def admit_threshold(rank: int) -> float:
    """The fraction of ``REALTIME_MAX_CONNECTIONS`` from which a user of ``rank`` is refused:
    ``REALTIME_CAPACITY_RESERVE`` for the unlisted, then even steps up to the cap for the
    listed categories from the last, the first refused only at the cap (default: others
    from 90 %, caterers 93.3 %, venues 96.7 %, photographers 100 %). Without priority,
    everyone up to the cap."""
    if not settings.REALTIME_PRIORITY:
        return 1.0
    listed = len([c for c in settings.REALTIME_CATEGORY_PRIORITY if c.strip()])
    reserve = min(1.0, max(0.0, settings.REALTIME_CAPACITY_RESERVE))
    rank = min(max(0, rank), listed)
    if listed == 0:
        return reserve
    return reserve + (1.0 - reserve) * (listed - rank) / listed


class ProcessCapacity:
    """This process's open WebSocket connections against ``REALTIME_MAX_CONNECTIONS``.

    ``admit`` is asked on connect, before any per-user or per-supplier count: near the cap
    it refuses by vendor category (``admit_threshold``), at the cap everyone. It is asked
    and counted on the event loop (no lock); ``release`` when an admitted one goes."""

    def __init__(self) -> None:
        self.open = 0

    def needs_rank(self) -> bool:
        """Whether the next connection's category matters (the reserve is reached): only
        then is it looked up (a database-thread call on a cache miss)."""
        cap = settings.REALTIME_MAX_CONNECTIONS
        if cap <= 0:
            return False
        return self.open >= cap * admit_threshold(len(settings.REALTIME_CATEGORY_PRIORITY)) - 1e-9

    def admit(self, rank: int) -> str | None:
        """Count one more connection of a user of ``rank``; the refusal reason if over."""
        cap = settings.REALTIME_MAX_CONNECTIONS
        if cap > 0:
            if self.open >= cap:
                return f"this server is at capacity ({cap} connections); retry later"
            if self.open >= cap * admit_threshold(rank) - 1e-9:  # 0.1 + 0.2 is 0.30000000000000004
                return (
                    "this server is near capacity and keeps its last connections for the"
                    " day's priority vendors; retry later"
                )
        self.open += 1
        return None

    def release(self) -> None:
        self.open = max(0, self.open - 1)


process_capacity = ProcessCapacity()
