"""Who is on a topic now (PROTOCOL §4 presence, §6 presence_diff).

A connection joins the topics it subscribes to and leaves them when it unsubscribes or
disconnects; the consumer refreshes its entries every ``PRESENCE_REFRESH_S``. An entry not
refreshed for ``PRESENCE_TTL_S`` expires, so the users of a crashed process vanish within a
minute. Presence is per *user*: ``join`` says whether the user is newly present and ``leave``
whether the user has gone (their last connection left); a user with a phone and a laptop is
one member. Expired entries are dropped lazily, by the next call on their topic; no diff is
sent for them.

Two stores: ``RedisPresence`` (shared by every server process) and ``LocalPresence`` (one
process, the embedded default). ``get_presence_store()`` picks by ``settings.REDIS_URL``.
The Redis store's failures (and its open breaker) surface as ``RealtimeError("unavailable")``;
``FallbackPresence``, what ``get_presence_store()`` returns with Redis, then answers from
this process's own view.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import orjson
import redis.asyncio as aioredis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from core.breaker import CircuitOpen, redis_breaker
from realtime.errors import RealtimeError

logger = logging.getLogger(__name__)

# An entry lives this long after its last join/refresh; the consumer refreshes every
# PRESENCE_REFRESH_S, so two refreshes can be missed (a GC pause, a slow Redis) before a
# live user flickers out, and a crashed process's users are gone within a minute.
PRESENCE_TTL_S = 60
PRESENCE_REFRESH_S = 20
# A process sends the presence diffs of a topic at most once per PRESENCE_BATCH_S, the
# joins and leaves of that time in one presence_diff (the last change of each user
# wins). A reconnect storm of N clients on a topic then costs a few sends and a few
# frames per member instead of 2N of each: the channel layer sends one message at a
# time per process, and 2,000 diffs in a burst held it for seconds (docs/benchmarks.md).
# A fifth of a second is not a delay anyone sees in a list of who is here.
PRESENCE_BATCH_S = 0.2


@runtime_checkable
class PresenceStore(Protocol):
    """The presence interface of the design doc; member: {"user_id", "name", "supplier_id"}."""

    async def join(self, topic: str, conn_id: str, member: dict) -> bool:
        """Record a connection on a topic; True if its user is newly present there."""
        ...

    async def leave(self, topic: str, conn_id: str) -> dict | None:
        """Remove a connection; its member if the user is no longer present at all."""
        ...

    async def members(self, topic: str) -> list[dict]:
        """The users present on a topic now, one entry per user_id, ordered by user_id."""
        ...

    async def refresh(self, conn_id: str, topics: Iterable[str]) -> list[str]:
        """Heartbeat: extend a connection's entries; returns the topics it had vanished from.

        The consumer re-joins those (its entries expired during a stall, or Redis lost them).
        """
        ...

    async def refresh_many(self, entries: dict[str, list[str]]) -> dict[str, list[str]]:
        """``refresh`` of many connections (``{conn_id: topics}``) at once: the sweep's
        heartbeat of the whole process. Returns ``{conn_id: lost topics}`` of those with any."""
        ...


def _user_id(member: dict) -> int:
    user_id = member.get("user_id")
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise ValueError(f"a presence member needs an integer user_id, not {user_id!r}")
    return user_id


def _by_user(members: Iterable[dict]) -> list[dict]:
    unique: dict[int, dict] = {}
    for member in members:
        unique.setdefault(member["user_id"], member)
    return [unique[user_id] for user_id in sorted(unique)]


# --- in-process -------------------------------------------------------------------------


class LocalPresence:
    """Presence in this process's memory: the embedded default (one server process)."""

    def __init__(
        self, *, ttl: float = PRESENCE_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        # topic -> conn_id -> (member, expires at); no awaits inside, so each call is atomic
        # on the event loop.
        self._topics: dict[str, dict[str, tuple[dict, float]]] = {}

    def _live(self, topic: str, now: float) -> dict[str, tuple[dict, float]]:
        conns = self._topics.get(topic)
        if conns is None:
            return {}
        for conn_id in [c for c, (_, expires) in conns.items() if expires <= now]:
            del conns[conn_id]
        if not conns:
            del self._topics[topic]
        return conns

    async def join(self, topic: str, conn_id: str, member: dict) -> bool:
        user_id = _user_id(member)
        now = self._clock()
        conns = self._live(topic, now)
        present = any(m["user_id"] == user_id for m, _ in conns.values())
        self._topics.setdefault(topic, conns)[conn_id] = (dict(member), now + self.ttl)
        return not present

    async def leave(self, topic: str, conn_id: str) -> dict | None:
        conns = self._topics.get(topic)
        entry = conns.pop(conn_id, None) if conns is not None else None
        conns = self._live(topic, self._clock())
        if entry is None:
            return None
        member = entry[0]
        if any(m["user_id"] == member["user_id"] for m, _ in conns.values()):
            return None
        return dict(member)

    async def members(self, topic: str) -> list[dict]:
        conns = self._live(topic, self._clock())
        return _by_user(dict(m) for m, _ in conns.values())

    async def refresh(self, conn_id: str, topics: Iterable[str]) -> list[str]:
        expires = self._clock() + self.ttl
        lost = []
        for topic in topics:
            conns = self._topics.get(topic)
            entry = conns.get(conn_id) if conns is not None else None
            if entry is None:
                lost.append(topic)
            else:
                conns[conn_id] = (entry[0], expires)
        return lost

    async def refresh_many(self, entries: dict[str, list[str]]) -> dict[str, list[str]]:
        lost = {conn_id: await self.refresh(conn_id, topics) for conn_id, topics in entries.items()}
        return {conn_id: topics for conn_id, topics in lost.items() if topics}


# --- Redis ------------------------------------------------------------------------------

# Per topic: hash {prefix}:presence:{topic} conn_id -> member JSON, and sorted set
# {prefix}:presence:{topic}:exp conn_id -> expiry (ms, Redis server clock, so that the
# clocks of app hosts do not matter). Each call is one Lua script: purge the expired, then
# act, atomically, so two processes can never both report the same user's join or leave.
# Both keys get a PEXPIRE of the TTL on each write: the newest entry expires last, so the
# keys outlive every entry and an abandoned topic disappears by itself.
_LUA_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function purge(hash, zset)
  local dead = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  for i = 1, #dead, 500 do
    local chunk = {unpack(dead, i, math.min(i + 499, #dead))}
    redis.call('HDEL', hash, unpack(chunk))
    redis.call('ZREM', zset, unpack(chunk))
  end
end
local function user_present(hash, user_id)
  for _, value in ipairs(redis.call('HVALS', hash)) do
    local ok, member = pcall(cjson.decode, value)
    if ok and type(member) == 'table' and member['user_id'] == user_id then
      return true
    end
  end
  return false
end
"""

# KEYS: hash, zset. ARGV: conn_id, member JSON, user_id, ttl ms. Returns 1 if the user is new.
_JOIN = (
    _LUA_COMMON
    + """
purge(KEYS[1], KEYS[2])
local present = user_present(KEYS[1], tonumber(ARGV[3]))
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
if present then return 0 end
return 1
"""
)

# KEYS: hash, zset. ARGV: conn_id. Returns the member JSON if its user has fully left.
_LEAVE = (
    _LUA_COMMON
    + """
local mine = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
purge(KEYS[1], KEYS[2])
if not mine then return false end
local ok, member = pcall(cjson.decode, mine)
if not ok or type(member) ~= 'table' then return false end
if user_present(KEYS[1], member['user_id']) then return false end
return mine
"""
)

# KEYS: hash, zset. Returns the live member JSONs.
_MEMBERS = (
    _LUA_COMMON
    + """
purge(KEYS[1], KEYS[2])
return redis.call('HVALS', KEYS[1])
"""
)

# KEYS: hash1, zset1, hash2, zset2, ... ARGV: ttl ms, then the conn_id of each pair.
# Renews each pair's entry; returns the 1-based indexes of the pairs whose entry is gone.
_REFRESH_MANY = (
    _LUA_COMMON
    + """
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 1, #KEYS, 2 do
  local conn = ARGV[(i + 1) / 2 + 1]
  if redis.call('ZSCORE', KEYS[i + 1], conn) then
    redis.call('ZADD', KEYS[i + 1], 'XX', now + ttl, conn)
    redis.call('PEXPIRE', KEYS[i], ttl)
    redis.call('PEXPIRE', KEYS[i + 1], ttl)
  else
    table.insert(lost, (i + 1) / 2)
  end
end
return lost
"""
)
# Connection-topic pairs per _REFRESH_MANY run: bounded script runs (Redis runs a script
# alone) for a process of 10,000 connections, a few a sweep.
REFRESH_CHUNK = 500


class _Script:
    """A Lua script run by SHA (EVALSHA), loaded on first use on each Redis server."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: aioredis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


_join, _leave, _members, _refresh_many = map(_Script, (_JOIN, _LEAVE, _MEMBERS, _REFRESH_MANY))

# One client per event loop and URL: a redis.asyncio connection belongs to the loop that
# opened it, and tests (and async_to_sync) run several loops in one process.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


def get_redis(url: str) -> aioredis.Redis:
    """The asyncio Redis client for ``url`` on the running event loop (made on first use)."""
    loop = asyncio.get_running_loop()
    per_loop = _clients.get(loop)
    if per_loop is None:
        per_loop = _clients[loop] = {}
    client = per_loop.get(url)
    if client is None:
        # Bounded, shared by presence, the connection registry and readiness: a burst of
        # connects waits up to 2 s for a free connection instead of opening hundreds.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.REDIS_POOL_MAX_CONNECTIONS,
            timeout=2,
            # Fail fast: presence must never hold up a frame; the caller degrades.
            socket_connect_timeout=2,
            socket_timeout=2,
            health_check_interval=30,
            # One immediate retry covers a pooled connection the server closed; redis-py's
            # default (10 retries with back-off) would stall every call for seconds during
            # an outage.
            retry=Retry(NoBackoff(), 1),
        )
        client = per_loop[url] = aioredis.Redis.from_pool(pool)
    return client


class RedisPresence:
    """Presence in Redis, shared by every server process, with per-connection expiry."""

    def __init__(
        self,
        url: str | None = None,
        *,
        ttl: float = PRESENCE_TTL_S,
        key_prefix: str = "wedsync",
    ) -> None:
        self.url = url or settings.REDIS_URL
        if not self.url:
            raise ValueError("RedisPresence needs a Redis URL (settings.REDIS_URL)")
        self.ttl_ms = max(1, round(ttl * 1000))
        self.key_prefix = key_prefix

    def keys(self, topic: str) -> tuple[str, str]:
        """The hash and the expiry sorted set of a topic."""
        base = f"{self.key_prefix}:presence:{topic}"
        return base, f"{base}:exp"

    async def _run(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await redis_breaker("presence").acall(script, get_redis(self.url), keys, args)
        except (TimeoutError, RedisError, OSError, CircuitOpen) as exc:
            raise RealtimeError("unavailable", "presence is unavailable right now") from exc

    async def join(self, topic: str, conn_id: str, member: dict) -> bool:
        user_id = _user_id(member)
        new = await self._run(
            _join, list(self.keys(topic)), [conn_id, orjson.dumps(member), user_id, self.ttl_ms]
        )
        return bool(new)

    async def leave(self, topic: str, conn_id: str) -> dict | None:
        gone = await self._run(_leave, list(self.keys(topic)), [conn_id])
        return None if gone is None else orjson.loads(gone)

    async def members(self, topic: str) -> list[dict]:
        values = await self._run(_members, list(self.keys(topic)), [])
        return _by_user(orjson.loads(value) for value in values)

    async def refresh(self, conn_id: str, topics: Iterable[str]) -> list[str]:
        topics = list(topics)
        if not topics:
            return []
        return (await self.refresh_many({conn_id: topics})).get(conn_id, [])

    async def refresh_many(self, entries: dict[str, list[str]]) -> dict[str, list[str]]:
        pairs = [(conn_id, topic) for conn_id, topics in entries.items() for topic in topics]
        lost: dict[str, list[str]] = {}
        for start in range(0, len(pairs), REFRESH_CHUNK):
            chunk = pairs[start : start + REFRESH_CHUNK]
            keys = [key for _, topic in chunk for key in self.keys(topic)]
            gone = await self._run(
                _refresh_many, keys, [self.ttl_ms, *(conn_id for conn_id, _ in chunk)]
            )
            for index in gone:
                conn_id, topic = chunk[index - 1]
                lost.setdefault(conn_id, []).append(topic)
        return lost


# --- degraded mode ----------------------------------------------------------------------


class FallbackPresence:
    """Redis presence that degrades to this process's view while Redis is unreachable.

    Every join and leave is also applied to a local store, so during an outage
    ``members`` answers with the users connected to this process (a partial view, never
    an error). When Redis is back, the next refresh finds the entries it lost and the
    consumer re-joins them there.
    """

    def __init__(self, shared: RedisPresence, local: LocalPresence) -> None:
        self.shared, self.local = shared, local

    async def join(self, topic: str, conn_id: str, member: dict) -> bool:
        new_here = await self.local.join(topic, conn_id, member)
        try:
            return await self.shared.join(topic, conn_id, member)
        except RealtimeError:
            return new_here

    async def leave(self, topic: str, conn_id: str) -> dict | None:
        gone_here = await self.local.leave(topic, conn_id)
        try:
            return await self.shared.leave(topic, conn_id)
        except RealtimeError:
            return gone_here

    async def members(self, topic: str) -> list[dict]:
        try:
            return await self.shared.members(topic)
        except RealtimeError:
            return await self.local.members(topic)

    async def refresh(self, conn_id: str, topics: Iterable[str]) -> list[str]:
        topics = list(topics)
        await self.local.refresh(conn_id, topics)
        try:
            return await self.shared.refresh(conn_id, topics)
        except RealtimeError:
            return []

    async def refresh_many(self, entries: dict[str, list[str]]) -> dict[str, list[str]]:
        await self.local.refresh_many(entries)
        try:
            return await self.shared.refresh_many(entries)
        except RealtimeError:
            return {}


# --- choice -----------------------------------------------------------------------------

_local_store: LocalPresence | None = None
_redis_stores: dict[tuple[str, str], FallbackPresence] = {}


def get_presence_store() -> PresenceStore:
    """The process's presence store: Redis (with the local fallback) when
    settings.REDIS_URL, else in-process."""
    global _local_store
    url = settings.REDIS_URL
    if url:
        # Keys under CACHE_NAMESPACE: deployments (and test runs) sharing a Redis keep apart.
        prefix = settings.CACHE_NAMESPACE
        store = _redis_stores.get((url, prefix))
        if store is None:
            store = _redis_stores[(url, prefix)] = FallbackPresence(
                RedisPresence(url, key_prefix=prefix), LocalPresence()
            )
        return store
    if _local_store is None:
        _local_store = LocalPresence()
    return _local_store


# --- diffs --------------------------------------------------------------------------------


class DiffBatcher:
    """The presence diffs this process sends, merged per topic over PRESENCE_BATCH_S.

    ``add`` records joins and leaves; a timer sends each topic's merged diff to the
    topic's group (every process's hub hands it to the local subscribers). Per user the
    last change wins: left and back within the batch is a join, which a client that
    still lists the user ignores. Best effort, like presence itself (PROTOCOL §7).
    """

    def __init__(self) -> None:
        self._pending: dict[str, dict[int, tuple[bool, dict]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task] = set()

    def add(self, topic: str, joins: Iterable[dict], leaves: Iterable[dict]) -> None:
        """Announce users who arrived on (``joins``) or fully left (``leaves``) a topic."""
        changes = self._pending.setdefault(topic, {})
        for joined, members in ((True, joins), (False, leaves)):
            for member in members:
                changes.pop(member["user_id"], None)  # re-inserted last: the latest change
                changes[member["user_id"]] = (joined, member)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(PRESENCE_BATCH_S, self.flush)

    def flush(self) -> None:
        """Send what is pending now (the timer; the shutdown drain)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for topic, changes in pending.items():
            joins = [member for joined, member in changes.values() if joined]
            leaves = [member for joined, member in changes.values() if not joined]
            task = asyncio.ensure_future(_send_diff(topic, joins, leaves))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        """Send what is pending and wait for the sends (a graceful shutdown)."""
        self.flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)


async def _send_diff(topic: str, joins: list[dict], leaves: list[dict]) -> None:
    from . import protocol
    from .broadcast import group_name, group_send_bounded

    text = protocol.presence_diff(topic, joins, leaves)
    try:
        await group_send_bounded(group_name(topic), {"type": "rt.presence", "topic": topic,
                                                     "text": text})  # fmt: skip
    except CircuitOpen:  # Redis is down (the breaker logged it); presence is best effort
        pass
    except Exception as exc:  # best effort: events never depend on it
        logger.warning("presence diff on %s not sent (%s)", topic, type(exc).__name__)


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DiffBatcher] = (
    weakref.WeakKeyDictionary()
)


def get_diff_batcher() -> DiffBatcher:
    """The diff batcher of the running event loop (made on first use)."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = DiffBatcher()
    return batcher
