"""The one place Redis clients are made, with their timeouts and retries.

Two kinds of use, each with its settings here and nowhere else:

* ``shared_client(url)``: the asyncio client of the running event loop that presence,
  the connection limits and readiness share. A bounded pool (a burst of connects waits
  for a free connection instead of opening hundreds), fail-fast timeouts (presence must
  never hold up a frame; its callers degrade) and one immediate retry, which covers a
  pooled connection the server closed; redis-py's default (ten retries with back-off)
  would stall every call for seconds during an outage.
* ``cache_client(url)`` / ``acache_client(url)``: the cache tier's clients, with no retry
  at all (a dead Redis costs one refused connect, and the breaker opens), and
  ``listener_client(url)`` for the cache's invalidation subscriber, whose reads block up
  to its own poll.

A redis.asyncio connection belongs to the loop that opened it, and tests (and
async_to_sync) run several loops in one process: asyncio clients are kept per loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

CONNECT_TIMEOUT_S = 2.0  # every client: an unreachable Redis fails within this
SHARED_SOCKET_TIMEOUT_S = 2.0  # presence, connection limits, readiness
SHARED_POOL_WAIT_S = 2.0  # a call waits this long for a free pooled connection
SHARED_HEALTH_CHECK_S = 30  # a pooled connection idle longer is pinged before use
CACHE_SOCKET_TIMEOUT_S = 2.0  # the cache tier's default (its own setting may change it)
LISTENER_SOCKET_TIMEOUT_S = 10.0  # the invalidation subscriber polls every second

_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


def shared_client(url: str) -> aioredis.Redis:
    """The running loop's shared asyncio client for ``url`` (made on first use)."""
    loop = asyncio.get_running_loop()
    per_loop = _shared.get(loop)
    if per_loop is None:
        per_loop = _shared[loop] = {}
    client = per_loop.get(url)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.REDIS_POOL_MAX_CONNECTIONS,
            timeout=SHARED_POOL_WAIT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SHARED_SOCKET_TIMEOUT_S,
            health_check_interval=SHARED_HEALTH_CHECK_S,
            retry=AsyncRetry(NoBackoff(), 1),
        )
        client = per_loop[url] = aioredis.Redis.from_pool(pool)
    return client


def _cache_options(socket_timeout: float) -> dict[str, Any]:
    return {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout}


def cache_client(url: str, *, socket_timeout: float = CACHE_SOCKET_TIMEOUT_S) -> redis.Redis:
    """A synchronous client for the cache tier: no retries."""
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **_cache_options(socket_timeout))


def acache_client(url: str, *, socket_timeout: float = CACHE_SOCKET_TIMEOUT_S) -> aioredis.Redis:
    """An asyncio client for the cache tier, for one event loop: no retries."""
    return aioredis.Redis.from_url(
        url, retry=AsyncRetry(NoBackoff(), 0), **_cache_options(socket_timeout)
    )


def listener_client(url: str) -> redis.Redis:
    """A synchronous client for a pub/sub subscriber thread."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=LISTENER_SOCKET_TIMEOUT_S
    )


class Script:
    """A Lua script run by SHA (EVALSHA), loaded on first use on each Redis server."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: aioredis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)
