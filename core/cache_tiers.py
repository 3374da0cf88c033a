"""The two tiers of core.cache: L1 in process memory, L2 in Redis (re-exported there)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import redis
import redis.asyncio as aredis
from cachetools import TLRUCache
from django_redis.compressors.lz4 import Lz4Compressor
from django_redis.serializers.msgpack import MSGPackSerializer

from core.breaker import CircuitBreaker, CircuitOpen, redis_breaker
from core.redis import acache_client, cache_client

logger = logging.getLogger(__name__)

INVALIDATE_CHANNEL = "wedsync:cache:invalidate"
# ms a cross-process load lock lives: longer than any sane load, short if its owner dies.
LOCK_PX = 5000
LOCK_WAIT = 2.0  # s a process without the lock polls L2 before loading itself
LOCK_POLL = 0.05
LOST_MAX = 10_000  # keys remembered for deletion after an outage; beyond, L2 TTL bounds them
_UNAVAILABLE = (CircuitOpen, redis.RedisError, OSError, TimeoutError)
_MISSING = object()
_LZ4_MAGIC = b"\x04\x22\x4d\x18"
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
# A write or delete bumps <key>:gen and announces the key, in one round trip. A loader
# stores its result only if <key>:gen is what it was before the load began, so a load that
# raced a write never puts the older value back into L2 (where it would live CACHE_L2_TTL).
_WRITE = """
if ARGV[2] == '1' then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[3])
else redis.call('del', KEYS[1]) end
redis.call('incr', KEYS[2])
redis.call('pexpire', KEYS[2], ARGV[4])
redis.call('publish', ARGV[5], ARGV[6])
return 1
"""
_STORE_IF_GEN = """
local gen = redis.call('get', KEYS[2])
if (gen == false and ARGV[3] == '') or gen == ARGV[3] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
GEN_MIN_MS = 60_000  # a generation outlives any load in flight


class L1Cache:
    """In-process TTL cache bounded by entries and approximate bytes (msgpack size); thread-safe."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 2**20,
        ttl: float = 5.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries, self.ttl = max_entries, ttl
        self._lock = threading.Lock()
        # Items are (value, size, ttl); the cache's own size bound is bytes, entries are ours.
        self._data = _CountingTLRU(
            maxsize=max_bytes,
            ttu=lambda _k, v, now: now + v[2],
            timer=timer,
            getsizeof=lambda v: v[1],
        )
        self.hits = self.misses = self.sets = 0

    def get(self, key: str, default: Any = _MISSING, *, count: bool = True) -> Any:
        with self._lock:
            item = self._data.get(key)
            if count:
                self.hits, self.misses = self.hits + bool(item), self.misses + (not item)
            return default if item is None else item[0]

    def set(self, key: str, value: Any, ttl: float | None = None, size: int | None = None) -> None:
        size = len(msgpack.packb(value)) if size is None else size
        ttl = self.ttl if ttl is None else min(ttl, self.ttl)
        with self._lock:
            self.sets += 1
            if size > self._data.maxsize:  # bigger than the whole tier: do not cache it here
                self._data.pop(key, None)
                return
            self._data[key] = (value, size, ttl)
            while len(self._data) > self.max_entries:
                self._data.popitem()

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def stats(self) -> dict[str, float]:
        with self._lock:
            self._data.expire()
            return {
                "hits": self.hits,
                "misses": self.misses,
                "sets": self.sets,
                "evictions": self._data.evictions,
                "bytes": self._data.currsize,
                "entries": len(self._data),
                "compression_ratio": 1.0,
            }


class _CountingTLRU(TLRUCache):
    evictions = 0

    def popitem(self) -> tuple[Any, Any]:  # called by cachetools when over size, and by us
        self.evictions += 1
        return super().popitem()


class L2Cache:
    """Redis tier: sync (redis-py) and asyncio clients, one key format, msgpack + lz4 bytes.

    Every call goes through ``breaker``; a Redis error or an open breaker reads as a miss
    (or a no-op write). The serializer/compressor are django-redis's own classes.
    """

    def __init__(
        self,
        *,
        url: str,
        ttl: float = 300.0,
        breaker: CircuitBreaker | None = None,
        socket_timeout: float = 2.0,
    ) -> None:
        self.url, self.ttl = url, ttl
        self.breaker = breaker or redis_breaker("redis-cache")
        self.serializer = MSGPackSerializer(options={})
        self.compressor = Lz4Compressor(options={})
        # No retries: a dead Redis must cost one refused connect, not seconds of backoff.
        self.socket_timeout = socket_timeout
        self.client = cache_client(url, socket_timeout=socket_timeout)
        self._aclients: dict[asyncio.AbstractEventLoop, aredis.Redis] = {}
        self._alock = threading.Lock()
        self.hits = self.misses = self.sets = self.errors = 0
        self._lost: set[str] = set()
        self.raw_bytes = self.stored_bytes = 0

    def aclient(self) -> aredis.Redis:
        """The asyncio client of the running loop (a client cannot cross event loops)."""
        loop = asyncio.get_running_loop()
        with self._alock:
            client = self._aclients.get(loop)
            if client is None:
                for old in [lp for lp in self._aclients if lp.is_closed()]:
                    del self._aclients[old]
                client = self._aclients[loop] = acache_client(
                    self.url, socket_timeout=self.socket_timeout
                )
            return client

    async def aclose(self) -> None:
        """Close the running loop's asyncio client (before the loop ends, e.g. in tests)."""
        with self._alock:
            client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def encode(self, value: Any) -> tuple[bytes, int]:
        raw = self.serializer.dumps(value)
        return self.compressor.compress(raw), len(raw)

    def decode(self, data: bytes) -> Any:
        # Lz4Compressor leaves values of 15 bytes or less uncompressed; a frame has a magic.
        raw = self.compressor.decompress(data) if data[:4] == _LZ4_MAGIC else data
        return self.serializer.loads(raw)

    def _ttl_ms(self, ttl: float | None) -> int:
        return max(1, int((self.ttl if ttl is None else ttl) * 1000))

    def _sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            result = self.breaker.call(fn, *args)
        except _UNAVAILABLE as exc:
            self.errors += 1
            logger.debug("cache L2 unavailable: %r", exc)
            return None
        if self._lost:
            keys = self._take_lost()
            if self._sync(self.client.delete, *keys) is None:
                self._lose(*keys)
        return result

    async def _async(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            result = await self.breaker.acall(fn, *args)
        except _UNAVAILABLE as exc:
            self.errors += 1
            logger.debug("cache L2 unavailable: %r", exc)
            return None
        if self._lost:
            keys = self._take_lost()
            if await self._async(lambda: self.aclient().delete(*keys)) is None:
                self._lose(*keys)
        return result

    def _lose(self, *keys: str) -> None:
        """Remember keys whose write did not reach Redis: the old value may still be there
        (a partition, not a restart), so they are deleted on the next successful call."""
        with self._alock:
            room = LOST_MAX - len(self._lost)
            self._lost.update(keys[:room])
        if room < len(keys):
            logger.warning("cache: over %d writes lost while Redis was away", LOST_MAX)

    def _take_lost(self) -> list[str]:
        with self._alock:
            keys, self._lost = list(self._lost), set()
        return keys

    def _found(self, data: bytes | None, count: bool = True) -> Any:
        if count:
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
        return _MISSING if data is None else self.decode(data)

    def _count_set(self, raw_len: int, stored_len: int) -> None:
        self.sets += 1
        self.raw_bytes += raw_len
        self.stored_bytes += stored_len

    # sync
    def get(self, key: str, *, count: bool = True) -> Any:
        return self._found(self._sync(self.client.get, key), count)

    def get_many(self, keys: list[str]) -> list[Any]:
        datas = self._sync(self.client.mget, keys) or [None] * len(keys)
        return [self._found(d) for d in datas]

    def set(
        self, key: str, value: Any, ttl: float | None = None, data: tuple[bytes, int] | None = None
    ) -> None:
        blob, raw_len = data or self.encode(value)
        if self._sync(lambda: self.client.set(key, blob, px=self._ttl_ms(ttl))):
            self._count_set(raw_len, len(blob))

    def delete(self, key: str) -> None:
        """Plain delete, no generation bump or announcement (tests, tools)."""
        self._sync(self.client.delete, key)

    def _write_args(
        self, key: str, data: tuple[bytes, int] | None, ttl: float | None, message: str
    ) -> tuple[Any, ...]:
        blob = data[0] if data else b""
        gen_ms = max(GEN_MIN_MS, self._ttl_ms(None), self._ttl_ms(ttl))
        return (
            _WRITE,
            2,
            key,
            f"{key}:gen",
            blob,
            "1" if data else "0",
            self._ttl_ms(ttl),
            gen_ms,
            INVALIDATE_CHANNEL,
            message,
        )

    def write(
        self, key: str, data: tuple[bytes, int] | None, ttl: float | None, message: str
    ) -> None:
        """Set (``data`` from ``encode``) or delete (None), bump the generation, announce."""
        done = self._sync(self.client.eval, *self._write_args(key, data, ttl, message))
        self._count_write(key, done, data)

    def _count_write(self, key: str, done: Any, data: tuple[bytes, int] | None) -> None:
        if done is None:
            self._lose(key)
        elif data:
            self._count_set(data[1], len(data[0]))

    def generation(self, key: str) -> str:
        """The key's write generation ('' if never written or Redis is gone); read before a load."""
        gen = self._sync(self.client.get, f"{key}:gen")
        return gen.decode() if gen else ""

    def store_loaded(
        self, key: str, data: tuple[bytes, int], ttl: float | None, gen: str
    ) -> bool | None:
        """Store a loaded value unless the key was written since ``gen`` was read (False);
        None when Redis is gone."""
        args = (_STORE_IF_GEN, 2, key, f"{key}:gen", data[0], self._ttl_ms(ttl), gen)
        return self._stored(self._sync(self.client.eval, *args), data)

    def _stored(self, result: int | None, data: tuple[bytes, int]) -> bool | None:
        if result:
            self._count_set(data[1], len(data[0]))
        return None if result is None else bool(result)

    def lock(self, key: str, token: str) -> bool | None:
        """Take the cross-process load lock: True got it, False taken, None Redis gone."""
        return self._sync(lambda: bool(self.client.set(key, token, nx=True, px=LOCK_PX)))

    def unlock(self, key: str, token: str) -> None:
        self._sync(self.client.eval, _RELEASE, 1, key, token)

    # async
    async def aget(self, key: str, *, count: bool = True) -> Any:
        return self._found(await self._async(lambda: self.aclient().get(key)), count)

    async def aget_many(self, keys: list[str]) -> list[Any]:
        datas = await self._async(lambda: self.aclient().mget(keys)) or [None] * len(keys)
        return [self._found(d) for d in datas]

    async def awrite(
        self, key: str, data: tuple[bytes, int] | None, ttl: float | None, message: str
    ) -> None:
        args = self._write_args(key, data, ttl, message)
        self._count_write(key, await self._async(lambda: self.aclient().eval(*args)), data)

    async def ageneration(self, key: str) -> str:
        gen = await self._async(lambda: self.aclient().get(f"{key}:gen"))
        return gen.decode() if gen else ""

    async def astore_loaded(
        self, key: str, data: tuple[bytes, int], ttl: float | None, gen: str
    ) -> bool | None:
        args = (_STORE_IF_GEN, 2, key, f"{key}:gen", data[0], self._ttl_ms(ttl), gen)
        return self._stored(await self._async(lambda: self.aclient().eval(*args)), data)

    async def alock(self, key: str, token: str) -> bool | None:
        async def attempt() -> bool:
            return bool(await self.aclient().set(key, token, nx=True, px=LOCK_PX))

        return await self._async(attempt)

    async def aunlock(self, key: str, token: str) -> None:
        await self._async(lambda: self.aclient().eval(_RELEASE, 1, key, token))

    def stats(self) -> dict[str, float]:
        ratio = self.raw_bytes / self.stored_bytes if self.stored_bytes else 1.0
        return {
            "hits": self.hits,
            "misses": self.misses,
            "sets": self.sets,
            "evictions": 0,
            "errors": self.errors,
            "bytes": self.stored_bytes,
            "raw_bytes": self.raw_bytes,
            "compression_ratio": ratio,
        }
