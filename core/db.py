"""The database threads of the realtime path.

Channels' ``database_sync_to_async`` runs every call in ONE thread per process (Django's
thread-sensitive mode): publishes, subscribes and replays of all connections queue
there, and one process tops out near 40 publishes/s while its event loop idles
(docs/benchmarks.md). The realtime path uses a pool of ``REALTIME_DB_THREADS`` threads
instead, each with its own database connection from the pool: publishes of different
topics run side by side (those of one topic still serialise on its cursor row lock),
and the pool bounds what a reconnect storm can ask of the database at once.

While a call runs, the thread knows its event loop, so a publish's broadcast after
commit is handed to the loop without the thread waiting for it
(``realtime.broadcast.broadcast_event``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from channels.db import DatabaseSyncToAsync
from django.conf import settings
from django.db import OperationalError

from core.breaker import OPEN, CircuitOpen, database_breaker

P = ParamSpec("P")
R = TypeVar("R")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_local = threading.local()


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is not None:  # the hot path: no lock once made
        return _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=max(1, settings.REALTIME_DB_THREADS), thread_name_prefix="wedsync-db"
            )
        return _executor


def calling_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop waiting for the current database-thread call, if any."""
    return getattr(_local, "loop", None)


class DatabaseUnavailable(OperationalError):
    """The database breaker is open: the call was not made (a ``DatabaseError``, so every
    caller's handling of an unreachable database applies: ``unavailable``, 503)."""


def in_db_thread(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``func`` as a coroutine function run in the realtime database threads.

    Like ``database_sync_to_async`` (old connections are closed before and after, which
    returns pooled ones), but several calls run at once; and through the database
    breaker (``core.breaker.database_breaker``): while it is open a call raises
    ``DatabaseUnavailable`` at once, without taking a thread.
    """

    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        breaker = database_breaker()
        if breaker.state == OPEN:  # fail at once, without taking a thread
            raise DatabaseUnavailable("the database is unreachable (its circuit breaker is open)")

        def call() -> R:
            _local.loop = loop
            try:
                # In the thread: counting a failure may read the wedding-day switch.
                return breaker.call(func, *args, **kwargs)
            except CircuitOpen as exc:  # opened meanwhile, or another call is probing
                raise DatabaseUnavailable(f"the database is unreachable ({exc})") from None
            finally:
                _local.loop = None

        runner: Any = DatabaseSyncToAsync(call, thread_sensitive=False, executor=_get_executor())
        return await runner()

    run.__name__ = getattr(func, "__name__", "in_db_thread")
    run.__doc__ = func.__doc__
    return run


# How old an answer of ``database_reachable`` may be: the read-only mark of the snapshot
# read follows an outage (and its end) within this, plus the probe's own time. Past half
# of it, a read starts the next probe without waiting for it, so under steady traffic no
# read waits.
REACHABLE_MAX_AGE_S = 1.0

_reachable: dict[str, Any] = {"at": float("-inf"), "ok": True}
_probes: dict[asyncio.AbstractEventLoop, asyncio.Future[bool]] = {}


def _probe() -> bool:
    from django.db import connection

    with connection.cursor() as cursor:  # a failure counts for the database breaker too
        cursor.execute("SELECT 1")
    return True


async def database_reachable() -> bool:
    """Whether the database answered a ``SELECT 1`` at most ``REACHABLE_MAX_AGE_S`` ago.

    For reads served from the cache without a query, which still say when the database
    is down. One probe at a time per event loop, in the database threads; a caller waits
    for it only when the last answer is too old. Never raises a database error.
    """
    age = time.monotonic() - _reachable["at"]
    if age < REACHABLE_MAX_AGE_S:
        if age >= REACHABLE_MAX_AGE_S / 2:
            _start_probe()
        return _reachable["ok"]
    return await asyncio.shield(_start_probe())


def _start_probe() -> asyncio.Future[bool]:
    loop = asyncio.get_running_loop()
    probe = _probes.get(loop)
    if probe is None:
        probe = _probes[loop] = asyncio.ensure_future(_run_probe(loop))
    return probe


async def _run_probe(loop: asyncio.AbstractEventLoop) -> bool:
    from django.db import DatabaseError

    try:
        try:
            ok = await in_db_thread(_probe)()
        except DatabaseError:
            ok = False
        _reachable.update(at=time.monotonic(), ok=ok)
        return ok
    finally:
        _probes.pop(loop, None)
