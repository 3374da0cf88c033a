"""The warm-up of a server process: what the first connection would otherwise pay for,
done before the process listens (docs/benchmarks.md, "First connect after start").

Before it, the first WebSocket connect and subscribe after a start cost several times
(5-20 here) what a later one costs: each of the realtime database threads was started by
the event loop on first use and opened its own database connection (the pool held one),
the shared Redis pool and the cache's asyncio client connected on first use, the ORM
built its first queries, and the first cached user row loaded Django's serializers (and
with them the XML modules). ``warm_up()`` does all of that once, at start-up:

* imports: Django's serializers (the cached user row); the token and JWT verifiers and
  the rest of the connect path are imported by this module;
* the database threads: all ``REALTIME_DB_THREADS`` started, each holding a pooled
  connection at the same moment (so the pool grows to as many), running ``SELECT 1``
  and a read of the cache's Redis tier (its threads' pool grows the same way);
  one of them runs the connect path's loaders (user row, access) for a user that does
  not exist, which builds the ORM's queries and caches without caching anything;
* Redis: the process's shared asyncio pool (a few connections, as a connect uses them
  side by side), the cache's asyncio client and a round trip through the channel layer;
* the event loop's realtime node (hub, connection registry) and the stream epoch, which
  every subscribe reads first;
* the platform's signing keys (JWKS) where they are configured.

``GracefulServer.startup`` (``wedsync.server.serve``) awaits it before uvicorn opens its
socket, so neither ``/readyz`` nor a client reaches a process that has not warmed up. A
step that fails (a dependency down at start) is logged and skipped: readiness reports the
dependency, and the step's work happens on first use as before. Nothing here waits
longer than ``STEP_TIMEOUT_S`` per step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.core import serializers
from django.db import connection

from core.cache import get_cache
from core.db import in_db_thread
from core.redis import shared_client
from realtime import jwt_auth, tokens  # noqa: F401  (the connect path's verifiers)
from realtime.epoch import aepoch_current
from realtime.node import get_node
from weddings.caching import supplier_profile_load, user_access_load, user_row_load

logger = logging.getLogger("wedsync.warmup")

# No step of the warm-up may hold the start longer than this.
STEP_TIMEOUT_S = 5.0
# Connections opened side by side in the shared Redis pool (a connect and its subscribe
# use a few at once: limits, presence, counts).
REDIS_WARM_CONNECTIONS = 4
# How long the channel layer's round trip waits before sending again (the pub/sub layer
# drops a message sent before its reader subscribed).
CHANNEL_RESEND_S = 0.01
# A user id no row has: the loaders run their real queries and find nothing.
_NO_USER = 0


def warm_imports() -> list[str]:
    """Import what the first connect would import: Django's serializers (the cached user
    row is Django's JSON serialisation, and loading them loads every built-in one, XML
    included). Returns the serializer formats loaded. (The token and JWT verifiers are
    imported with this module.)"""
    serializers.get_serializer("json")
    return sorted(serializers.get_serializer_formats())


def _db_thread_work(barrier: threading.Barrier, first: bool) -> str:
    """One database thread's warm-up: a pooled connection, held until every thread holds
    one (the barrier), so that the pool opens as many."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    # The cache's Redis tier, read from these threads (a pool shared by them: one
    # connection per thread reading at the same time).
    get_cache().get(f"warmup:{uuid.uuid4().hex}")
    if first:
        user_row_load(_NO_USER)
        user_access_load(_NO_USER)
        supplier_profile_load(_NO_USER)
    try:
        barrier.wait(STEP_TIMEOUT_S)
    except threading.BrokenBarrierError:  # another thread failed or the pool is too small
        pass
    return threading.current_thread().name


def _db_parties() -> int:
    threads = max(1, settings.REALTIME_DB_THREADS)
    if settings.DATABASE_IS_SQLITE:
        return threads
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    return min(threads, pool["max_size"]) if isinstance(pool, dict) else threads


async def warm_db_threads() -> list[str]:
    """Start every realtime database thread, each with a database connection checked out
    at the same time; the threads' names."""
    parties = _db_parties()
    barrier = threading.Barrier(parties)
    work = in_db_thread(_db_thread_work)
    try:
        names = await asyncio.gather(*(work(barrier, n == 0) for n in range(parties)))
    finally:
        barrier.abort()  # a thread still waiting (another failed) returns at once
    return sorted(set(names))


async def warm_redis() -> int:
    """Open connections of the shared asyncio Redis pool side by side; how many."""
    if not settings.REDIS_URL:
        return 0
    client = shared_client(settings.REDIS_URL)
    count = max(1, min(REDIS_WARM_CONNECTIONS, settings.REDIS_POOL_MAX_CONNECTIONS))
    await asyncio.gather(*(client.ping() for _ in range(count)))
    return count


async def warm_cache() -> bool:
    """One read through the two-tier cache's asyncio side (connects its Redis tier)."""
    await get_cache().aget(f"warmup:{uuid.uuid4().hex}")
    return True


async def warm_channel_layer() -> str:
    """A message through the channel layer to this process (connects and subscribes)."""
    layer = get_channel_layer()
    if layer is None:
        return "none"
    channel = await layer.new_channel(prefix="warmup")
    reader = asyncio.ensure_future(layer.receive(channel))
    try:
        # The pub/sub layer delivers only to a subscribed reader: re-send until it arrives.
        while True:
            await layer.send(channel, {"type": "warmup"})
            done, _ = await asyncio.wait({reader}, timeout=CHANNEL_RESEND_S)
            if done:
                reader.result()
                break
    finally:
        reader.cancel()
    return type(layer).__name__


async def warm_node() -> str:
    """The running loop's realtime node (its hub, connection registry) and the stream
    epoch, read through the cache as the first subscribe reads it."""
    get_node()
    return await aepoch_current()


async def warm_jwks() -> bool:
    """Fetch the platform's signing keys once, where a JWKS URL is configured."""
    if not settings.REALTIME_JWT_JWKS_URL:
        return False
    try:  # a kid no key has: the first look-up fetches the set, then finds nothing
        await jwt_auth.jwks_cache().akey("")
    except jwt_auth.JwtRefused:
        pass
    return True


async def _step(name: str, step: Callable[[], Awaitable[Any]], report: dict[str, Any]) -> None:
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(step(), STEP_TIMEOUT_S)
    except Exception as exc:  # a dependency down at start: first use pays, as before
        logger.warning("warm-up step %s skipped: %s: %s", name, type(exc).__name__, exc)
        report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
        return
    ms = round((time.perf_counter() - started) * 1000, 1)
    report[name] = {"ok": True, "ms": ms, "result": result}


async def warm_up() -> dict[str, Any]:
    """Warm this process up (see the module doc); what each step did, for the log."""

    async def imports() -> list[str]:
        return warm_imports()

    report: dict[str, Any] = {}
    await _step("imports", imports, report)
    # Independent of each other: side by side, so the start grows by the slowest.
    await asyncio.gather(
        _step("database_threads", warm_db_threads, report),
        _step("redis", warm_redis, report),
        _step("cache", warm_cache, report),
        _step("channel_layer", warm_channel_layer, report),
        _step("jwks", warm_jwks, report),
    )
    await _step("node", warm_node, report)
    logger.info("warm-up done: %s", report)
    return report
