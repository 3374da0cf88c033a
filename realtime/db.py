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
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from channels.db import DatabaseSyncToAsync
from django.conf import settings

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


def in_db_thread(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``func`` as a coroutine function run in the realtime database threads.

    Like ``database_sync_to_async`` (old connections are closed before and after, which
    returns pooled ones), but several calls run at once.
    """

    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()

        def call() -> R:
            _local.loop = loop
            try:
                return func(*args, **kwargs)
            finally:
                _local.loop = None

        runner: Any = DatabaseSyncToAsync(call, thread_sensitive=False, executor=_get_executor())
        return await runner()

    run.__name__ = getattr(func, "__name__", "in_db_thread")
    run.__doc__ = func.__doc__
    return run
