"""The database threads of the realtime path.

Channels' ``database_sync_to_async`` runs every call in ONE thread per process (Django's
thread-sensitive mode): publishes, subscribes and replays of all connections queue
there, and one process tops out near 40 publishes/s while its event loop idles
(docs/benchmarks.md). The realtime path uses a pool of ``REALTIME_DB_THREADS`` threads
instead, each with its own database connection from the pool: publishes of different
topics run side by side (those of one topic still serialise on its cursor row lock),
and the pool bounds what a reconnect storm can ask of the database at once.

Under overload the threads take the most urgent work first (``PriorityExecutor``,
docs/adr/0031-priority-under-overload.md): critical publishes (emergencies, timeline
changes), then ordinary work, then replays and history reads; an item that waited longer
than ``REALTIME_DB_PRIORITY_MAX_WAIT_MS`` is taken next whatever its class, so nothing
starves. The class of a call is ``in_db_thread(func, priority=...)`` or the caller's
``db_priority(...)``.

While a call runs, the thread knows its event loop, so a publish's broadcast after
commit is handed to the loop without the thread waiting for it
(``realtime.broadcast.broadcast_event``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

from channels.db import DatabaseSyncToAsync
from django.conf import settings
from django.db import OperationalError

from core.breaker import OPEN, CircuitOpen, database_breaker

P = ParamSpec("P")
R = TypeVar("R")

# The classes of database work, most urgent first (docs/adr/0031-priority-under-overload.md).
CRITICAL = 0  # publishes of critical events: emergencies, timeline changes
ORDINARY = 1  # every other call: ordinary publishes, acks, subscribe checks, sweeps
BACKGROUND = 2  # replays and history reads: a client catching up can wait a little
PRIORITY_NAMES = ("critical", "ordinary", "background")

# The class of the calls made from the current task (``db_priority``).
_priority: contextvars.ContextVar[int] = contextvars.ContextVar("db_priority", default=ORDINARY)


@contextlib.contextmanager
def db_priority(priority: int) -> Iterator[None]:
    """Run the database-thread calls made inside the block at ``priority``."""
    token = _priority.set(priority)
    try:
        yield
    finally:
        _priority.reset(token)


class PriorityExecutor(Executor):
    """A fixed pool of threads that take queued calls by class, with a bound on waiting.

    One FIFO queue per class. A free thread takes the head of the most urgent non-empty
    queue, except that a call of a lower class that has waited longer than ``max_wait``
    seconds (the oldest such) is taken next when no critical call waits, and every other
    time when one does. So a critical call waits at most for one overdue call per thread
    (never behind a backlog of them: under a sustained overload every ordinary call is
    overdue, and taking them all first would make critical work the last), while under a
    flood of critical calls the lower classes still get every other turn and the oldest of
    them never waits much beyond ``max_wait``. ``enabled=False`` (the
    ``REALTIME_PRIORITY`` switch) puts every call in one FIFO, as a ThreadPoolExecutor does.
    The class of a submitted call is the submitting context's (``db_priority``)."""

    def __init__(self, workers: int, *, max_wait: float, enabled: bool = True) -> None:
        self.workers = max(1, workers)
        self.max_wait = max(0.0, max_wait)
        self.enabled = enabled
        self._queues: tuple[deque, ...] = (deque(), deque(), deque())
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._shutdown = False
        # Calls taken per class, and taken early because they were overdue (tests, docs).
        self.taken = [0, 0, 0]
        self.overdue = 0
        self._last_overdue = False  # the previous take was an overdue call

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        future: Future[R] = Future()
        priority = _priority.get() if self.enabled else ORDINARY
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot submit database work after shutdown")
            self._queues[priority].append((time.monotonic(), future, fn, args, kwargs))
            if len(self._threads) < self.workers:
                thread = threading.Thread(
                    target=self._work, name=f"wedsync-db_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
        return future

    def queued(self) -> list[int]:
        """Calls waiting per class (critical, ordinary, background)."""
        with self._cond:
            return [len(q) for q in self._queues]

    def _take(self) -> tuple | None:
        queues = self._queues
        if self.enabled and self.max_wait > 0 and not (queues[CRITICAL] and self._last_overdue):
            now = time.monotonic()
            overdue = [q for q in queues[1:] if q and now - q[0][0] >= self.max_wait]
            if overdue:
                self.overdue += 1
                self._last_overdue = True
                queue = min(overdue, key=lambda q: q[0][0])
                self.taken[queues.index(queue)] += 1
                return queue.popleft()
        self._last_overdue = False
        for index, queue in enumerate(queues):
            if queue:
                self.taken[index] += 1
                return queue.popleft()
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                item = self._take()
                while item is None:
                    if self._shutdown:
                        return
                    self._cond.wait()
                    item = self._take()
            _, future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            del item, future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                for queue in self._queues:
                    while queue:
                        queue.popleft()[1].cancel()
            self._cond.notify_all()
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()


_executor: PriorityExecutor | None = None
_executor_lock = threading.Lock()
_local = threading.local()


def _get_executor() -> PriorityExecutor:
    global _executor
    if _executor is not None:  # the hot path: no lock once made
        return _executor
    with _executor_lock:
        if _executor is None:
            _executor = PriorityExecutor(
                settings.REALTIME_DB_THREADS,
                max_wait=settings.REALTIME_DB_PRIORITY_MAX_WAIT_MS / 1000,
                enabled=settings.REALTIME_PRIORITY,
            )
        return _executor


def db_executor() -> PriorityExecutor:
    """This process's database-thread executor (made on first use)."""
    return _get_executor()


def calling_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop waiting for the current database-thread call, if any."""
    return getattr(_local, "loop", None)


class DatabaseUnavailable(OperationalError):
    """The database breaker is open: the call was not made (a ``DatabaseError``, so every
    caller's handling of an unreachable database applies: ``unavailable``, 503)."""


def in_db_thread(func: Callable[P, R], *, priority: int | None = None) -> Callable[P, Awaitable[R]]:
    """``func`` as a coroutine function run in the realtime database threads, at
    ``priority`` (None: the caller's ``db_priority``, by default ORDINARY).

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
        if priority is None:
            return await runner()
        token = _priority.set(priority)  # read when the call is queued (``submit``)
        try:
            return await runner()
        finally:
            _priority.reset(token)

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
