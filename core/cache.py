"""Two-tier cache: in-process L1 (cachetools) in front of Redis L2 (msgpack + lz4).

Staleness bound: a ``set``/``delete`` in one process publishes the key on the Redis
channel ``wedsync:cache:invalidate``; every other process drops its L1 copy when the
message arrives (milliseconds on loopback). If a message is lost (Redis restart, a
subscriber reconnecting, a read racing a write) an L1 copy lives at most the L1 TTL
(``CACHE_L1_TTL``, default 5 s): that is the bound. L2 is shared and never staler than
the last write. Redis down: every L2 call goes through one ``CircuitBreaker`` and a
failure counts as a miss, so callers get L1 + their loader, never an exception.
See docs/cache.md.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from core.cache_tiers import (
    _MISSING,
    INVALIDATE_CHANNEL,
    LOCK_POLL,
    LOCK_WAIT,
    L1Cache,
    L2Cache,
)
from core.redis import listener_client

logger = logging.getLogger(__name__)

__all__ = [
    "INVALIDATE_CHANNEL",
    "L1Cache",
    "L2Cache",
    "TwoTierCache",
    "current_cache",
    "get_cache",
    "reset_cache",
]


class _Flight:
    """One in-flight sync load; followers wait on it instead of loading again."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class TwoTierCache:
    """get / get_many / set / delete / get_or_load over L1 and L2 (either may be None).

    Values must be msgpack-able plain data and are shared with other callers of this
    process: treat what you get as read-only.
    """

    def __init__(
        self, *, l1: L1Cache | None, l2: L2Cache | None, namespace: str = "wedsync"
    ) -> None:
        self.l1, self.l2, self.namespace = l1, l2, namespace
        self.sender = uuid.uuid4().hex  # "this process": our own invalidations are ignored
        self.loads = 0
        self.load_time_s = 0.0
        self._guard = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._aflights: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Any]] = {}
        self._listener: _InvalidationListener | None = None

    def _k(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    # --- sync ------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value, from L1 or else L2 (which then fills L1), or ``default``."""
        value = self._get(self._k(key))
        return default if value is _MISSING else value

    def _get(self, k: str) -> Any:
        if self.l1 is not None and (value := self.l1.get(k)) is not _MISSING:
            return value
        if self.l2 is None:
            return _MISSING
        value = self.l2.get(k)
        if value is not _MISSING and self.l1 is not None:
            self.l1.set(k, value)
        return value

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values of ``keys`` that are present (missing keys are left out)."""
        found, todo = self._l1_many(keys)
        if todo and self.l2 is not None:
            for key, value in zip(todo, self.l2.get_many([self._k(k) for k in todo]), strict=True):
                self._fill(found, key, value)
        return found

    def _l1_many(self, keys: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
        found: dict[str, Any] = {}
        todo: list[str] = []
        for key in keys:
            value = self.l1.get(self._k(key)) if self.l1 is not None else _MISSING
            if value is _MISSING:
                todo.append(key)
            else:
                found[key] = value
        return found, todo

    def _fill(self, found: dict[str, Any], key: str, value: Any) -> None:
        if value is not _MISSING:
            found[key] = value
            if self.l1 is not None:
                self.l1.set(self._k(key), value)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Write L2 then L1 and tell the other processes to drop their L1 copy."""
        k = self._k(key)
        data = self.l2.encode(value) if self.l2 is not None else None
        if self.l2 is not None:
            self.l2.write(k, data, ttl, f"{self.sender}|{k}")
        if self.l1 is not None:
            self.l1.set(k, value, ttl, len(data[0]) if data else None)

    def delete(self, key: str) -> None:
        """Remove the key from both tiers and from the other processes' L1."""
        k = self._k(key)
        if self.l2 is not None:
            self.l2.write(k, None, None, f"{self.sender}|{k}")
        if self.l1 is not None:
            self.l1.delete(k)

    def get_or_load(
        self, key: str, loader: Callable[[], Any], ttl: float | None = None, *, lock: bool = False
    ) -> Any:
        """The cached value, or ``loader()`` stored; one load per key per process (and across
        processes with ``lock=True``). The loader's exceptions reach the caller."""
        k = self._k(key)
        if (value := self._get(k)) is not _MISSING:
            return value
        with self._guard:
            flight = self._flights.get(k)
            leader = flight is None
            if leader:
                flight = self._flights[k] = _Flight()
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = self._load(key, k, loader, ttl, lock)
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._guard:
                del self._flights[k]
            flight.done.set()

    def _load(
        self, key: str, k: str, loader: Callable[[], Any], ttl: float | None, lock: bool
    ) -> Any:
        if self.l1 is not None and (value := self.l1.get(k, count=False)) is not _MISSING:
            return value  # a load that finished just before we became the leader stored it
        token = uuid.uuid4().hex
        got = self.l2.lock(f"{k}:lock", token) if lock and self.l2 is not None else None
        if got is False:  # another process loads it: wait for its value in L2, bounded
            deadline = time.monotonic() + LOCK_WAIT
            while time.monotonic() < deadline:
                time.sleep(LOCK_POLL)
                if (value := self.l2.get(k, count=False)) is not _MISSING:  # type: ignore[union-attr]
                    if self.l1 is not None:
                        self.l1.set(k, value, ttl)
                    return value
        gen = self.l2.generation(k) if self.l2 is not None else ""
        try:
            started = time.perf_counter()
            value = loader()
            self._count_load(started)
            data = self.l2.encode(value) if self.l2 is not None else None
            if data is None or self.l2.store_loaded(k, data, ttl, gen) is not False:  # type: ignore[union-attr]
                self._l1_store(k, value, ttl, data)
            return value
        finally:
            if got:
                self.l2.unlock(f"{k}:lock", token)  # type: ignore[union-attr]

    def _l1_store(self, k: str, value: Any, ttl: float | None, data: Any) -> None:
        # Not when L2 refused the value: a write raced the load and it is already older.
        if self.l1 is not None:
            self.l1.set(k, value, ttl, len(data[0]) if data else None)

    def _count_load(self, started: float) -> None:
        with self._guard:
            self.loads += 1
            self.load_time_s += time.perf_counter() - started

    # --- async -----------------------------------------------------------------------------

    async def aget(self, key: str, default: Any = None) -> Any:
        """Async ``get``."""
        value = await self._aget(self._k(key))
        return default if value is _MISSING else value

    async def _aget(self, k: str) -> Any:
        if self.l1 is not None and (value := self.l1.get(k)) is not _MISSING:
            return value
        if self.l2 is None:
            return _MISSING
        value = await self.l2.aget(k)
        if value is not _MISSING and self.l1 is not None:
            self.l1.set(k, value)
        return value

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Async ``get_many``."""
        found, todo = self._l1_many(keys)
        if todo and self.l2 is not None:
            values = await self.l2.aget_many([self._k(k) for k in todo])
            for key, value in zip(todo, values, strict=True):
                self._fill(found, key, value)
        return found

    async def aset(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Async ``set``."""
        k = self._k(key)
        data = self.l2.encode(value) if self.l2 is not None else None
        if self.l2 is not None:
            await self.l2.awrite(k, data, ttl, f"{self.sender}|{k}")
        if self.l1 is not None:
            self.l1.set(k, value, ttl, len(data[0]) if data else None)

    async def adelete(self, key: str) -> None:
        """Async ``delete``."""
        k = self._k(key)
        if self.l2 is not None:
            await self.l2.awrite(k, None, None, f"{self.sender}|{k}")
        if self.l1 is not None:
            self.l1.delete(k)

    async def aget_or_load(
        self, key: str, loader: Callable[[], Any], ttl: float | None = None, *, lock: bool = False
    ) -> Any:
        """Async ``get_or_load``; ``loader`` may return a value or an awaitable."""
        k = self._k(key)
        while True:
            if (value := await self._aget(k)) is not _MISSING:
                return value
            fkey = (asyncio.get_running_loop(), k)
            fut = self._aflights.get(fkey)
            if fut is None:
                break
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                if not fut.cancelled():
                    raise  # we were cancelled, not the leader
        fut = self._aflights[fkey] = asyncio.get_running_loop().create_future()
        try:
            value = await self._aload(key, k, loader, ttl, lock)
            fut.set_result(value)
            return value
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(exc)
                fut.exception()  # retrieved: no "never retrieved" warning without followers
            raise
        finally:
            del self._aflights[fkey]

    async def _aload(
        self, key: str, k: str, loader: Callable[[], Any], ttl: float | None, lock: bool
    ) -> Any:
        if self.l1 is not None and (value := self.l1.get(k, count=False)) is not _MISSING:
            return value
        token = uuid.uuid4().hex
        got = await self.l2.alock(f"{k}:lock", token) if lock and self.l2 is not None else None
        if got is False:
            deadline = time.monotonic() + LOCK_WAIT
            while time.monotonic() < deadline:
                await asyncio.sleep(LOCK_POLL)
                if (value := await self.l2.aget(k, count=False)) is not _MISSING:  # type: ignore[union-attr]
                    if self.l1 is not None:
                        self.l1.set(k, value, ttl)
                    return value
        gen = await self.l2.ageneration(k) if self.l2 is not None else ""
        try:
            started = time.perf_counter()
            value = loader()
            if inspect.isawaitable(value):
                value = await value
            self._count_load(started)
            data = self.l2.encode(value) if self.l2 is not None else None
            if data is None or await self.l2.astore_loaded(k, data, ttl, gen) is not False:  # type: ignore[union-attr]
                self._l1_store(k, value, ttl, data)
            return value
        finally:
            if got:
                await self.l2.aunlock(f"{k}:lock", token)  # type: ignore[union-attr]

    # --- stats and invalidation ------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, float]]:
        """Counters per tier for monitoring; ``loads``/``load_time_s`` are this cache's loader
        calls, repeated in both tiers. A tier that is not configured reports zeros."""
        empty = {
            "hits": 0,
            "misses": 0,
            "sets": 0,
            "evictions": 0,
            "bytes": 0,
            "compression_ratio": 1.0,
        }
        out = {
            "l1": self.l1.stats() if self.l1 else dict(empty),
            "l2": self.l2.stats() if self.l2 else dict(empty, errors=0),
        }
        for tier in out.values():
            tier.update(loads=self.loads, load_time_s=self.load_time_s)
        return out

    async def aclose(self) -> None:
        """Close this event loop's Redis client; the next async call opens a new one."""
        if self.l2 is not None:
            await self.l2.aclose()

    def start_invalidation_listener(self) -> threading.Event:
        """Start (once) the daemon thread that drops L1 keys other processes wrote; returns
        an event set once it is subscribed."""
        with self._guard:
            if self._listener is None and self.l1 is not None and self.l2 is not None:
                self._listener = _InvalidationListener(self)
                self._listener.start()
        return self._listener.ready if self._listener else _set_event()

    def stop_invalidation_listener(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


class _InvalidationListener(threading.Thread):
    """Subscribes to INVALIDATE_CHANNEL and drops the named L1 keys; reconnects with backoff.
    After a reconnect it clears L1: messages sent while disconnected are lost."""

    def __init__(self, cache: TwoTierCache) -> None:
        super().__init__(name="wedsync-cache-invalidation", daemon=True)
        self.cache = cache
        self.ready = threading.Event()
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Ask the thread to end; it notices within a second (not joined: callers never wait)."""
        self._stopping.set()

    def run(self) -> None:
        l1, l2 = self.cache.l1, self.cache.l2
        assert l1 is not None and l2 is not None
        backoff, subscribed_before = 0.1, False
        while not self._stopping.is_set():
            client = listener_client(l2.url)
            try:
                pubsub = client.pubsub()
                pubsub.subscribe(INVALIDATE_CHANNEL)
                while not self._stopping.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        if subscribed_before:
                            l1.clear()
                        subscribed_before, backoff = True, 0.1
                        self.ready.set()
                    elif msg["type"] == "message":
                        sender, _, key = msg["data"].decode().partition("|")
                        if sender != self.cache.sender:
                            l1.delete(key)
            except Exception as exc:  # Redis gone: L1 TTL bounds staleness until we are back
                logger.warning("cache invalidation listener: %r; retrying in %.1fs", exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                client.close()


_cache: TwoTierCache | None = None
_cache_pid = 0
_cache_lock = threading.Lock()


def get_cache() -> TwoTierCache:
    """The process-wide cache: L1 always, L2 and cross-process invalidation with REDIS_URL."""
    global _cache, _cache_pid
    if _cache is not None and _cache_pid == os.getpid():
        return _cache
    from django.conf import settings

    with _cache_lock:
        if _cache is None or _cache_pid != os.getpid():  # rebuilt after fork (Celery prefork)
            l1 = L1Cache(
                max_entries=settings.CACHE_L1_MAX_ENTRIES,
                max_bytes=settings.CACHE_L1_MAX_BYTES,
                ttl=settings.CACHE_L1_TTL,
            )
            l2 = (
                L2Cache(url=settings.REDIS_URL, ttl=settings.CACHE_L2_TTL)
                if settings.REDIS_URL
                else None
            )
            # Tests set a unique CACHE_NAMESPACE per test.
            cache = TwoTierCache(l1=l1, l2=l2, namespace=settings.CACHE_NAMESPACE)
            cache.start_invalidation_listener()
            _cache, _cache_pid = cache, os.getpid()
    return _cache


def current_cache() -> TwoTierCache | None:
    """This process's cache if it made one (monitoring reads its stats without creating it)."""
    cache = _cache
    return cache if cache is not None and _cache_pid == os.getpid() else None


def reset_cache() -> None:
    """Forget the process-wide cache (tests, after changing settings)."""
    global _cache
    with _cache_lock:
        if _cache is not None:
            _cache.stop_invalidation_listener()
        _cache = None
