"""Presence in Redis, shared by every server process, with per-connection expiry.

Failures (and the open breaker) surface as ``RealtimeError("unavailable")``; the
fallback store (``realtime.presence.fallback``) then answers from this process's view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from django.conf import settings
from redis.exceptions import RedisError

from core.breaker import CircuitOpen, redis_breaker
from core.redis import Script as LuaScript
from core.redis import shared_client as get_redis
from realtime.errors import RealtimeError

from .base import PRESENCE_TTL_S, by_user, user_id_of

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


_join, _leave, _members, _refresh_many = map(LuaScript, (_JOIN, _LEAVE, _MEMBERS, _REFRESH_MANY))


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

    async def _run(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        try:
            return await redis_breaker("presence").acall(script, get_redis(self.url), keys, args)
        except (TimeoutError, RedisError, OSError, CircuitOpen) as exc:
            raise RealtimeError("unavailable", "presence is unavailable right now") from exc

    async def join(self, topic: str, conn_id: str, member: dict) -> bool:
        user_id = user_id_of(member)
        new = await self._run(
            _join, list(self.keys(topic)), [conn_id, orjson.dumps(member), user_id, self.ttl_ms]
        )
        return bool(new)

    async def leave(self, topic: str, conn_id: str) -> dict | None:
        gone = await self._run(_leave, list(self.keys(topic)), [conn_id])
        return None if gone is None else orjson.loads(gone)

    async def members(self, topic: str) -> list[dict]:
        values = await self._run(_members, list(self.keys(topic)), [])
        return by_user(orjson.loads(value) for value in values)

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
