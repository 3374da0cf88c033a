"""The connection limit counter: open WebSocket connections per user, per supplier and per
wedding, across processes.

Every connection registers on connect and is counted against its user and each of its
user's suppliers; a connection over a limit is refused with close 4029 (PROTOCOL §8).
The limits are ``REALTIME_MAX_CONNECTIONS_PER_USER`` and
``REALTIME_MAX_CONNECTIONS_PER_SUPPLIER``, the latter multiplied by
``REALTIME_WEDDING_DAY_MULTIPLIER`` in wedding-day mode. Staff read the counts per
supplier and per wedding (``GET /api/realtime/connections``, the admin lists).

``ConnectionCounter`` (``get_connection_counter()``) keeps the counts in two stores with
one interface: ``RedisCounts`` (shared by every server process) and ``LocalCounts``
(this process only: the embedded default, and the fallback while Redis is unreachable).
In Redis each counted thing is a sorted set of connection ids scored by expiry (ms,
Redis's clock). Each process re-scores its connections at every sweep, so the
connections of a crashed process stop counting after ``REALTIME_CONNECTION_TTL``
seconds, and entries Redis lost (a restart) come back.

Not to be confused with the live connections of an event loop (``realtime.node``'s
``ConsumerRegistry``): this counts connections against limits, that holds them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from core.breaker import CircuitOpen, redis_breaker
from core.redis import Script as LuaScript
from core.redis import shared_client as get_redis

logger = logging.getLogger(__name__)

KINDS = ("user", "supplier", "wedding")


@dataclass(slots=True)
class Connection:
    """What the counter knows of one connection."""

    conn_id: str
    user_id: int
    suppliers: tuple[int, ...] = ()
    weddings: set[int] = field(default_factory=set)

    def keys(self) -> list[tuple[str, int]]:
        """``(kind, id)`` of everything this connection counts against."""
        return (
            [("user", self.user_id)]
            + [("supplier", s) for s in self.suppliers]
            + [("wedding", w) for w in sorted(self.weddings)]
        )


@dataclass(frozen=True)
class Refusal:
    """Why a connection was refused: the limit it would have broken."""

    kind: str  # "user" or "supplier"
    id: int
    limit: int

    @property
    def reason(self) -> str:
        """The close reason sent with 4029."""
        if self.kind == "user":
            return f"at most {self.limit} connections per user; close one and retry later"
        return f"supplier {self.id} has {self.limit} connections open; retry later"


# --- in-process -------------------------------------------------------------------------


class LocalCounts:
    """The counts in this process's memory (no awaits inside: each call is atomic)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sets: dict[tuple[str, int], dict[str, float]] = {}

    def _live(self, key: tuple[str, int], now: float) -> dict[str, float]:
        entries = self._sets.get(key, {})
        for conn_id in [c for c, expires in entries.items() if expires <= now]:
            del entries[conn_id]
        return entries

    async def register(
        self, conn: Connection, *, user_limit: int, supplier_limit: int, ttl: float
    ) -> Refusal | None:
        now = self._clock()
        if len(self._live(("user", conn.user_id), now)) >= user_limit:
            return Refusal("user", conn.user_id, user_limit)
        for supplier in conn.suppliers:
            if len(self._live(("supplier", supplier), now)) >= supplier_limit:
                return Refusal("supplier", supplier, supplier_limit)
        for key in conn.keys():
            self._sets.setdefault(key, {})[conn.conn_id] = now + ttl
        return None

    async def unregister(self, conn: Connection) -> None:
        for key in conn.keys():
            entries = self._sets.get(key)
            if entries is not None:
                entries.pop(conn.conn_id, None)
                if not entries:
                    del self._sets[key]

    async def track(self, conn: Connection, kind: str, ids: Iterable[int], ttl: float) -> None:
        expires = self._clock() + ttl
        for id_ in ids:
            self._sets.setdefault((kind, id_), {})[conn.conn_id] = expires

    async def untrack(self, conn: Connection, kind: str, ids: Iterable[int]) -> None:
        for id_ in ids:
            entries = self._sets.get((kind, id_))
            if entries is not None:
                entries.pop(conn.conn_id, None)

    async def heartbeat(self, conns: Iterable[Connection], ttl: float) -> None:
        expires = self._clock() + ttl
        for conn in conns:
            for key in conn.keys():
                self._sets.setdefault(key, {})[conn.conn_id] = expires

    async def counts(self, kind: str, ids: Iterable[int]) -> dict[int, int]:
        now = self._clock()
        return {id_: len(self._live((kind, id_), now)) for id_ in ids}

    async def totals(self, kind: str) -> dict[int, int]:
        ids = [id_ for k, id_ in list(self._sets) if k == kind]
        return {id_: n for id_, n in (await self.counts(kind, ids)).items() if n}


# --- Redis ------------------------------------------------------------------------------

# KEYS: the user's set, then each supplier's set, then each wedding's set. ARGV: conn_id,
# ttl ms, user limit, supplier limit, number of supplier keys. Returns 0 when registered,
# else the 1-based index of the key whose limit is reached.
_REGISTER = LuaScript(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local nsup = tonumber(ARGV[5])
for i = 1, 1 + nsup do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local limit = tonumber(i == 1 and ARGV[3] or ARGV[4])
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) == false
     and redis.call('ZCARD', KEYS[i]) >= limit then
    return i
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return 0
"""
)

# KEYS: sets. ARGV: ttl ms, then conn_ids (one per key). Re-scores (or re-adds) entries.
_HEARTBEAT = LuaScript(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return #KEYS
"""
)

# KEYS: sets. Returns each set's live count.
_COUNTS = LuaScript(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  out[i] = redis.call('ZCARD', KEYS[i])
end
return out
"""
)


class RedisCounts:
    """The counts in Redis, shared by every server process."""

    def __init__(self, url: str, *, key_prefix: str = "wedsync") -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.breaker = redis_breaker("connections")

    def key(self, kind: str, id_: int | str) -> str:
        """The sorted set of one user, supplier or wedding."""
        return f"{self.key_prefix}:conn:{kind}:{id_}"

    async def _run(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        return await self.breaker.acall(script, get_redis(self.url), keys, args)

    async def register(
        self, conn: Connection, *, user_limit: int, supplier_limit: int, ttl: float
    ) -> Refusal | None:
        keys = [self.key(kind, id_) for kind, id_ in conn.keys()]
        args = [conn.conn_id, round(ttl * 1000), user_limit, supplier_limit, len(conn.suppliers)]
        index = int(await self._run(_REGISTER, keys, args))
        if index == 0:
            return None
        if index == 1:
            return Refusal("user", conn.user_id, user_limit)
        return Refusal("supplier", conn.suppliers[index - 2], supplier_limit)

    async def unregister(self, conn: Connection) -> None:
        await self._zrem([self.key(kind, id_) for kind, id_ in conn.keys()], conn.conn_id)

    async def _zrem(self, keys: list[str], conn_id: str) -> None:
        async def zrem() -> None:
            pipe = get_redis(self.url).pipeline(transaction=False)
            for key in keys:
                pipe.zrem(key, conn_id)
            await pipe.execute()

        if keys:
            await self.breaker.acall(zrem)

    async def track(self, conn: Connection, kind: str, ids: Iterable[int], ttl: float) -> None:
        keys = [self.key(kind, id_) for id_ in ids]
        if keys:
            await self._run(_HEARTBEAT, keys, [round(ttl * 1000)] + [conn.conn_id] * len(keys))

    async def untrack(self, conn: Connection, kind: str, ids: Iterable[int]) -> None:
        await self._zrem([self.key(kind, id_) for id_ in ids], conn.conn_id)

    async def heartbeat(self, conns: Iterable[Connection], ttl: float) -> None:
        keys: list[str] = []
        members: list[str] = []
        for conn in conns:
            for kind, id_ in conn.keys():
                keys.append(self.key(kind, id_))
                members.append(conn.conn_id)
        for start in range(0, len(keys), 1000):  # bounded script runs
            await self._run(
                _HEARTBEAT,
                keys[start : start + 1000],
                [round(ttl * 1000), *members[start : start + 1000]],
            )

    async def counts(self, kind: str, ids: Iterable[int]) -> dict[int, int]:
        ids = list(ids)
        if not ids:
            return {}
        values = await self._run(_COUNTS, [self.key(kind, id_) for id_ in ids], [])
        return dict(zip(ids, (int(v) for v in values), strict=True))

    async def totals(self, kind: str) -> dict[int, int]:
        async def scan() -> list[int]:
            prefix = self.key(kind, "")
            found = []
            async for key in get_redis(self.url).scan_iter(match=prefix + "*", count=1000):
                tail = key.decode()[len(prefix) :]
                if tail.isdigit():
                    found.append(int(tail))
            return found

        ids = await self.breaker.acall(scan)
        return {id_: n for id_, n in (await self.counts(kind, sorted(ids))).items() if n}


class ConnectionCounter:
    """The process's connection counter: Redis when configured, this process's memory otherwise or
    while Redis is unreachable (limits then hold per process, and the counts staff see
    are this process's)."""

    def __init__(self, url: str | None, key_prefix: str = "wedsync") -> None:
        self.local = LocalCounts()
        self.shared = RedisCounts(url, key_prefix=key_prefix) if url else None

    @property
    def ttl(self) -> float:
        return float(settings.REALTIME_CONNECTION_TTL)

    async def _both(self, method: str, *args: Any, **kwargs: Any) -> Any:
        local_result = await getattr(self.local, method)(*args, **kwargs)
        if self.shared is None:
            return local_result
        try:
            return await getattr(self.shared, method)(*args, **kwargs)
        except CircuitOpen:
            return local_result
        except Exception:
            logger.warning("connection registry: Redis %s failed; counting locally", method)
            return local_result

    async def register(self, conn: Connection, *, supplier_limit: int) -> Refusal | None:
        """Register ``conn`` unless that breaks a limit; the Refusal says which one."""
        user_limit = settings.REALTIME_MAX_CONNECTIONS_PER_USER
        refusal = await self.local.register(
            conn, user_limit=user_limit, supplier_limit=supplier_limit, ttl=self.ttl
        )
        if refusal is not None or self.shared is None:
            return refusal
        try:
            refusal = await self.shared.register(
                conn, user_limit=user_limit, supplier_limit=supplier_limit, ttl=self.ttl
            )
        except Exception as exc:
            if not isinstance(exc, CircuitOpen):
                logger.warning("connection registry: Redis unreachable; limits held locally")
            return None
        if refusal is not None:
            await self.local.unregister(conn)
        return refusal

    async def unregister(self, conn: Connection) -> None:
        await self._both("unregister", conn)

    async def track_weddings(self, conn: Connection, weddings: Iterable[int]) -> None:
        """Count ``conn`` on these weddings too (it subscribed to their topics).

        Here at once; in Redis from the next sweep's ``heartbeat``, which writes every
        count of every connection of the process in a few script runs. A subscribe then
        costs Redis nothing for it (a reconnect storm multiplies every round trip), and
        the per-wedding counts staff read lag by at most ``REALTIME_SWEEP_INTERVAL``; no
        limit depends on them.
        """
        new = set(weddings) - conn.weddings
        if new:
            conn.weddings |= new
            await self.local.track(conn, "wedding", sorted(new), self.ttl)

    async def untrack_weddings(self, conn: Connection, weddings: Iterable[int]) -> None:
        gone = set(weddings) & conn.weddings
        if gone:
            conn.weddings -= gone
            await self._both("untrack", conn, "wedding", sorted(gone))

    async def heartbeat(self, conns: Iterable[Connection]) -> None:
        """Keep these connections counted (every sweep); re-adds what Redis lost."""
        await self._both("heartbeat", list(conns), self.ttl)

    async def counts(self, kind: str, ids: Iterable[int]) -> dict[int, int]:
        """Open connections per user, supplier or wedding id."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        return await self._both("counts", kind, list(ids))

    async def totals(self, kind: str) -> dict[int, int]:
        """``{id: open connections}`` of every user, supplier or wedding that has any."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        return await self._both("totals", kind)

    @property
    def degraded(self) -> bool:
        """True while Redis is configured but its breaker is open: counts are local."""
        return self.shared is not None and self.shared.breaker.state == "open"


_counters: dict[tuple[str, str], ConnectionCounter] = {}


def get_connection_counter() -> ConnectionCounter:
    """The process's connection counter for the configured Redis (or none); its keys
    start with CACHE_NAMESPACE, so deployments sharing a Redis keep apart."""
    url, prefix = settings.REDIS_URL or "", settings.CACHE_NAMESPACE
    counter = _counters.get((url, prefix))
    if counter is None:
        counter = _counters[(url, prefix)] = ConnectionCounter(url or None, prefix)
    return counter


def supplier_limit(wedding_day: bool) -> int:
    """The per-supplier limit now: multiplied in wedding-day mode."""
    limit = settings.REALTIME_MAX_CONNECTIONS_PER_SUPPLIER
    return limit * settings.REALTIME_WEDDING_DAY_MULTIPLIER if wedding_day else limit
