"""Prometheus metrics of WedSync, in prometheus_client's multiprocess mode.

Every process of a host (ASGI servers, Celery workers, beat) writes its values to files
in ``PROMETHEUS_MULTIPROC_DIR`` (settings.py exports it before prometheus_client can be
imported); ``GET /metrics`` and the snapshot task add the files up (``monitoring.figures``).

Two kinds of instruments:

* calls at the point where something happens: small functions below
  (``connection_opened()``, ``frame_in(kind)``, ``published(event, priority)`` ...), cheap
  enough for hot paths (one mmap write, ~1 µs) and never raising;
* a sampler thread per process (``start_sampler``) that, every
  ``METRICS_SAMPLE_INTERVAL`` seconds, sets the gauges of what the process holds (open
  connections, subscriptions, presence entries and outbox depth through the samplers apps
  register with ``register_sampler``; breaker states) and copies
  the two-tier cache's own counters into shared counters, so the cache's hot path pays
  nothing for being measured.

Gauges use the ``live*`` modes: a process that exits is forgotten
(``mark_process_dead``), counters of dead processes keep counting (totals never fall).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from core.breaker import breaker_states
from core.cache import current_cache

# The directory must exist, and the variable be set, before prometheus_client is imported.
_DIR = Path(settings.PROMETHEUS_MULTIPROC_DIR)
_DIR.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_DIR))

from prometheus_client import Counter, Gauge, Histogram, values  # noqa: E402
from prometheus_client.multiprocess import mark_process_dead  # noqa: E402

if values.ValueClass is values.MutexValue:  # imported before settings exported the directory
    raise ImproperlyConfigured(
        "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; "
        "load the Django settings first"
    )

logger = logging.getLogger(__name__)

# Label values are bounded sets: anything else is counted as "other", so a client cannot
# grow the metric files by sending made-up frame types or close codes.
FRAME_TYPES = frozenset(
    {"subscribe", "unsubscribe", "publish", "presence", "ack", "ping", "invalid"}
)
ERROR_CODES = frozenset(
    {
        "bad_frame", "too_large", "unknown_topic", "forbidden", "invalid_payload",
        "conflict", "rate_limited", "limit_reached", "unavailable",
    }
)  # fmt: skip
CLOSE_CODES = frozenset({1000, 1001, 1005, 1006, 1011, 1012, 1013, 4000, 4001, 4008, 4009, 4029})
# Server-side delivery latency (stored -> written to the socket): milliseconds on a quiet
# day, up to the sweep interval (5 s) when the channel layer lost the message.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0)
# HTTP answers: a cached snapshot read takes ~2 ms, a publish or a history page tens of
# milliseconds; the database pool gives up after 2 s (DATABASE_POOL_TIMEOUT).
HTTP_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}

# --- WebSocket connections (instrumented in realtime/consumers.py) ----------------------

CONNECTS = Counter("wedsync_ws_connects", "WebSocket connections accepted")
CLOSES = Counter("wedsync_ws_closes", "WebSocket connections closed, by close code", ["code"])
FRAMES_IN = Counter("wedsync_ws_frames_in", "Frames received from clients, by type", ["type"])
ERRORS = Counter("wedsync_ws_errors", "Error replies sent to clients, by code", ["code"])
REPLAYS = Counter(
    "wedsync_replays",
    "Subscribes with since, by whether the history covered them",
    ["recovered"],
)
REPLAYED = Counter("wedsync_replayed_events", "Events replayed to reconnecting clients")
DELIVERIES = Counter("wedsync_event_deliveries", "Event frames queued to connections")
DELIVERY_LATENCY = Histogram(
    "wedsync_delivery_latency_seconds",
    "From the event's commit to its frame written to a client's socket",
    buckets=LATENCY_BUCKETS,
)

# --- HTTP requests (monitoring/middleware.py) ----------------------------------------------

# The route is the URL pattern's name (``wedding-snapshot``, ``web:wedding``), never the path,
# so ids in URLs and made-up paths cannot grow the metric files.
HTTP_REQUESTS = Counter(
    "wedsync_http_requests",
    "HTTP requests answered, by method, route name and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "wedsync_http_request_duration_seconds",
    "From the request reaching Django to its response, by method and route name",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
)

# --- sampled per process (the sampler thread) --------------------------------------------

CONNECTIONS = Gauge(
    "wedsync_ws_connections", "Open WebSocket connections", multiprocess_mode="livesum"
)
SUBSCRIPTIONS = Gauge(
    "wedsync_ws_subscriptions",
    "Topic subscriptions of open connections",
    multiprocess_mode="livesum",
)
PRESENCE = Gauge(
    "wedsync_presence_entries",
    "Presence entries (connection x topic) held by open connections",
    multiprocess_mode="livesum",
)
OUTBOX_DEPTH = Gauge(
    "wedsync_outbox_depth", "Frames queued in connections' outboxes", multiprocess_mode="livesum"
)
OUTBOX_DEPTH_MAX = Gauge(
    "wedsync_outbox_depth_max", "The fullest outbox of one connection", multiprocess_mode="livemax"
)
SERVER_CPU = Gauge(
    "wedsync_server_cpu_ratio",
    "CPU of a server process between two samples (1.0 = one core; the busiest process)",
    multiprocess_mode="livemax",
)
BREAKER_STATE = Gauge(
    "wedsync_circuit_breaker_state",
    "Redis circuit breaker: 0 closed, 1 half-open, 2 open (the worst process)",
    ["name"],
    multiprocess_mode="livemax",
)
CACHE_REQUESTS = Counter(
    "wedsync_cache_requests", "Two-tier cache reads, by tier and hit/miss", ["tier", "result"]
)
CACHE_ERRORS = Counter("wedsync_cache_errors", "Redis (L2) cache calls that failed")

# --- where we own the code -----------------------------------------------------------------

PUBLISHES = Counter(
    "wedsync_events_published",
    "Events stored in the event log (committed), by event and priority",
    ["event", "priority"],
)
ACKS = Counter("wedsync_acks", "New acknowledgements recorded", ["ack_required"])
RATE_LIMITED = Counter("wedsync_rate_limited", "Publishes refused with rate_limited")
BREAKER_OPENS = Counter(
    "wedsync_circuit_breaker_opens", "Times a Redis circuit breaker opened", ["name"]
)
TASKS = Counter(
    "wedsync_celery_tasks", "Celery task runs, by task and outcome", ["task", "outcome"]
)
TASK_DURATION = Histogram(
    "wedsync_celery_task_duration_seconds",
    "Celery task run time",
    ["task"],
    buckets=TASK_BUCKETS,
)


def _guard(fn: Any) -> Any:
    """Measuring must never break what it measures: log and carry on."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            logger.exception("metric %s failed", fn.__name__)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


# --- the instrumentation calls -------------------------------------------------------------


@_guard
def connection_opened() -> None:
    """A WebSocket was accepted (consumer, after ``websocket.accept``)."""
    CONNECTS.inc()


@_guard
def connection_closed(code: int | None) -> None:
    """A WebSocket ended with ``code`` (consumer's ``websocket_disconnect``)."""
    label = code if code in CLOSE_CODES else "other"
    CLOSES.labels(str(label)).inc()


@_guard
def frame_in(kind: str) -> None:
    """A client frame arrived: its lower-case type, or "invalid" when it did not decode."""
    kind = kind.lower()
    FRAMES_IN.labels(kind if kind in FRAME_TYPES else "other").inc()


@_guard
def error(code: str) -> None:
    """An error reply (or error frame) with ``code`` was sent to a client."""
    ERRORS.labels(code if code in ERROR_CODES else "other").inc()


@_guard
def replayed(*, recovered: bool, events: int) -> None:
    """A subscribe with ``since``: whether the history covered it, and how many events
    it replays."""
    REPLAYS.labels("true" if recovered else "false").inc()
    if events > 0:
        REPLAYED.inc(events)


@_guard
def delivered(n: int = 1) -> None:
    """``n`` event frames were queued to a connection (live or filled from the log)."""
    DELIVERIES.inc(n)


@_guard
def delivery_latency(seconds: float) -> None:
    """An event frame reached a socket ``seconds`` after its event was stored."""
    DELIVERY_LATENCY.observe(max(0.0, seconds))


@_guard
def http_request(method: str, route: str, status: int, seconds: float) -> None:
    """An HTTP request to ``route`` (its URL name) was answered with ``status`` after
    ``seconds`` (monitoring's middleware)."""
    method = method if method in HTTP_METHODS else "other"
    HTTP_REQUESTS.labels(method, route, str(status) if 100 <= status <= 599 else "other").inc()
    HTTP_DURATION.labels(method, route).observe(max(0.0, seconds))


@_guard
def published(event: str, priority: str) -> None:
    """An event was committed to the log (realtime.services, on commit)."""
    PUBLISHES.labels(event, priority).inc()


@_guard
def acked(*, ack_required: bool) -> None:
    """A new acknowledgement was recorded."""
    ACKS.labels("true" if ack_required else "false").inc()


@_guard
def rate_limited() -> None:
    """A publish was refused by the per-connection rate limit."""
    RATE_LIMITED.inc()


@_guard
def breaker_changed(name: str, new: str) -> None:
    """A Redis circuit breaker changed state (its ``on_change`` hook)."""
    BREAKER_STATE.labels(name).set(BREAKER_STATES.get(new, 0))
    if new == "open":
        BREAKER_OPENS.labels(name).inc()


# --- Celery (signals connected in monitoring.apps) -------------------------------------------

_task_started: dict[str, float] = {}


def task_started(task_id: str | None = None, **kwargs: Any) -> None:
    """``task_prerun``: remember when the task started; make sure this process samples."""
    start_sampler()
    if task_id:
        _task_started[task_id] = time.perf_counter()


def task_finished(task_id: str | None = None, task: Any = None, state: str | None = None,
                  **kwargs: Any) -> None:  # fmt: skip
    """``task_postrun``: count the run by outcome and observe its duration."""
    started = _task_started.pop(task_id or "", None)
    name = getattr(task, "name", None) or "unknown"
    try:
        TASKS.labels(name, (state or "unknown").lower()).inc()
        if started is not None:
            TASK_DURATION.labels(name).observe(time.perf_counter() - started)
    except Exception:
        logger.exception("celery task metrics failed")


def process_exiting(**kwargs: Any) -> None:
    """A process leaves: its live gauges stop counting at once (at exit, and Celery's
    ``worker_process_shutdown``; a crashed process is dropped by the next scrape)."""
    try:
        mark_process_dead(os.getpid(), str(_DIR))
    except OSError:
        logger.debug("mark_process_dead failed", exc_info=True)


# Every process that loaded this module has live gauge files (the unlabelled gauges are
# created with it); inherited by forked children, each removing its own pid's.
atexit.register(process_exiting)


# --- the sampler ---------------------------------------------------------------------------

# What apps add to each sample: callables that set the gauges of what this process holds
# (realtime registers its connections in ``RealtimeConfig.ready``). Core knows no app.
_samplers: list[Callable[[], None]] = []


def register_sampler(sampler: Callable[[], None]) -> None:
    """Call ``sampler()`` on every sample of this process (once, however often registered)."""
    if sampler not in _samplers:
        _samplers.append(sampler)


class _Sampler:
    """Copies what this process holds into the shared gauges and counters."""

    def __init__(self) -> None:
        self.cache_seen: dict[tuple[str, str], float] = {}
        self.cache_id: int | None = None
        self.cpu_seen: tuple[float, float] | None = None  # (wall clock, process CPU)

    def sample(self) -> None:
        for sampler in list(_samplers):
            try:
                sampler()
            except Exception:
                logger.exception("metrics sampler %r failed", sampler)
        self._breakers()
        self._cache()
        self._cpu()

    def _cpu(self) -> None:
        """This process's CPU since the previous sample (the scaling rules read it)."""
        now = (time.monotonic(), time.process_time())
        if self.cpu_seen is not None and now[0] > self.cpu_seen[0]:
            SERVER_CPU.set((now[1] - self.cpu_seen[1]) / (now[0] - self.cpu_seen[0]))
        self.cpu_seen = now

    def _breakers(self) -> None:
        for name, state in breaker_states().items():
            BREAKER_STATE.labels(name).set(BREAKER_STATES.get(state, 0))

    def _cache(self) -> None:
        cache = current_cache()
        if cache is None:
            return
        if id(cache) != self.cache_id:  # a new cache object counts from zero
            self.cache_id, self.cache_seen = id(cache), {}
        stats = cache.stats()
        for tier in ("l1", "l2"):
            tier_stats = stats.get(tier, {})
            for result, key in (("hit", "hits"), ("miss", "misses")):
                self._add(CACHE_REQUESTS.labels(tier, result), (tier, key), tier_stats.get(key, 0))
        self._add(CACHE_ERRORS, ("l2", "errors"), stats.get("l2", {}).get("errors", 0))

    def _add(self, counter: Any, key: tuple[str, str], value: float) -> None:
        previous = self.cache_seen.get(key, 0)
        delta = value - previous if value >= previous else value
        if delta > 0:
            counter.inc(delta)
        self.cache_seen[key] = value


_sampler = _Sampler()
_sampler_lock = threading.Lock()
_sampler_pid = 0


def sample_now() -> None:
    """Sample this process at once (the sampler thread, and before a local read)."""
    with _sampler_lock:
        try:
            _sampler.sample()
        except Exception:
            logger.exception("metrics sample failed")


def _sample_forever(interval: float) -> None:
    while True:
        sample_now()
        time.sleep(interval)


def start_sampler() -> None:
    """Start this process's sampler thread (once per process; again after a fork)."""
    global _sampler_pid
    pid = os.getpid()
    if _sampler_pid == pid:
        return
    with _sampler_lock:
        if _sampler_pid == pid:
            return
        _sampler_pid = pid
    thread = threading.Thread(
        target=_sample_forever,
        args=(settings.METRICS_SAMPLE_INTERVAL,),
        name="wedsync-metrics-sampler",
        daemon=True,
    )
    thread.start()


def metrics_dir() -> Path:
    """The directory the metric files of this host's processes are in."""
    return _DIR


def local_value(name: str, labels: dict[str, str] | None = None) -> float:
    """This process's own value of a sample (tests and debugging), 0 when absent."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def live_pids(pids: Iterable[int]) -> set[int]:
    """Those of ``pids`` that name a running process of this host."""
    alive = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:  # another user's process: alive
            pass
        alive.add(pid)
    return alive
