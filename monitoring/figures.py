"""The metrics added up across processes and hosts, and the figures derived from two readings.

``read_totals()`` reads every process's metric files of this host (prometheus_client's
``MultiProcessCollector``) into plain numbers: the gauges now and the counters since the
files were created. ``read_totals_from_peers()`` does the same over other hosts' ``GET
/metrics`` (``METRICS_PEERS``): on Kubernetes every pod is a host, and the worker that
takes the minute snapshot sees none of the web pods' files. ``derive(previous, current)``
turns two readings into what staff look at: deliveries per second, error rate, latency
percentiles, cache hit ratios. All are pure data in and out (msgpack-able), so readings
can be cached and stored in a ``MetricSnapshot``.

Before reading, the live gauges of processes that died without saying so (SIGKILL, a
crash) are dropped (``prune_dead_processes``).
"""

from __future__ import annotations

import http.client
import ipaddress
import itertools
import logging
import math
import re
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from core import metrics

logger = logging.getLogger(__name__)

_FILE_PID = re.compile(r"[a-z_]+_(\d+)\.db")

# One sample: its name (``wedsync_ws_connects_total``), labels and value.
Sample = tuple[str, dict[str, str], float]


def _pids(path: Path, pattern: str) -> set[int]:
    files = path.glob(pattern)
    return {int(m.group(1)) for f in files if (m := _FILE_PID.fullmatch(f.name))}


def prune_dead_processes(path: Path | None = None, *, counters: bool = False) -> list[int]:
    """Drop the live gauges of processes that no longer run; returns their pids.

    With ``counters``, delete every file of theirs, so the directory stops growing: the
    totals then fall, which Prometheus reads as a counter reset (``runstack`` does this
    at start, ``manage.py prune_metrics`` on demand)."""
    path = path or metrics.metrics_dir()
    pids = _pids(path, "*.db" if counters else "gauge_live*_*.db")
    dead = sorted(pids - metrics.live_pids(pids))
    for pid in dead:
        mark_process_dead(pid, str(path))
        if counters:
            for stale in path.glob(f"*_{pid}.db"):
                stale.unlink(missing_ok=True)
    return dead


def multiprocess_registry(path: Path | None = None) -> CollectorRegistry:
    """A registry that reads the metric files of every process of this host."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path or metrics.metrics_dir()))
    return registry


def _samples(registry: CollectorRegistry) -> Iterable[Sample]:
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def read_totals(path: Path | None = None) -> dict[str, Any]:
    """Every process's metrics of this host, added up, as plain numbers."""
    path = path or metrics.metrics_dir()
    prune_dead_processes(path)
    return totals_from_samples(_samples(multiprocess_registry(path)))


def totals_from_samples(samples: Iterable[Sample]) -> dict[str, Any]:
    """Samples of any number of processes or hosts added up: counters and histogram
    buckets add, per-process gauges add (connections, subscriptions ...), the "worst of"
    gauges (fullest outbox, busiest CPU, breaker states) take the largest."""
    totals: dict[str, Any] = {
        "connections": 0, "subscriptions": 0, "presence": 0,
        "outbox_depth": 0, "outbox_depth_max": 0,
        "connects": 0, "frames": 0, "errors": 0, "publishes": 0, "deliveries": 0,
        "replays": 0, "replayed": 0, "rate_limited": 0, "task_failures": 0, "tasks": 0,
        "errors_by_code": {}, "closes_by_code": {},
        "latency": {"buckets": {}, "count": 0, "sum": 0.0},
        "cache": {"l1": {"hits": 0, "misses": 0}, "l2": {"hits": 0, "misses": 0}},
        "breakers": {},
        "server_cpu": None,
    }  # fmt: skip
    simple = {
        "wedsync_ws_connections": "connections",
        "wedsync_ws_subscriptions": "subscriptions",
        "wedsync_presence_entries": "presence",
        "wedsync_outbox_depth": "outbox_depth",
        "wedsync_ws_connects_total": "connects",
        "wedsync_ws_frames_in_total": "frames",
        "wedsync_events_published_total": "publishes",
        "wedsync_event_deliveries_total": "deliveries",
        "wedsync_replays_total": "replays",
        "wedsync_replayed_events_total": "replayed",
        "wedsync_rate_limited_total": "rate_limited",
        "wedsync_celery_tasks_total": "tasks",
    }
    # livemax gauges: one sample per host already, the largest of its processes.
    largest = {
        "wedsync_outbox_depth_max": "outbox_depth_max",
        "wedsync_server_cpu_ratio": "server_cpu",
    }
    for name, labels, value in samples:
        if name in simple:
            totals[simple[name]] += value
        if name in largest:
            totals[largest[name]] = max(value, totals[largest[name]] or 0.0)
        if name == "wedsync_ws_errors_total":
            totals["errors"] += value
            codes = totals["errors_by_code"]
            codes[labels["code"]] = codes.get(labels["code"], 0) + value
        elif name == "wedsync_ws_closes_total":
            codes = totals["closes_by_code"]
            codes[labels["code"]] = codes.get(labels["code"], 0) + value
        elif name == "wedsync_delivery_latency_seconds_bucket":
            buckets = totals["latency"]["buckets"]
            buckets[labels["le"]] = buckets.get(labels["le"], 0) + value
        elif name == "wedsync_delivery_latency_seconds_count":
            totals["latency"]["count"] += value
        elif name == "wedsync_delivery_latency_seconds_sum":
            totals["latency"]["sum"] += value
        elif name == "wedsync_cache_requests_total":
            tier = totals["cache"].setdefault(labels["tier"], {"hits": 0, "misses": 0})
            tier["hits" if labels["result"] == "hit" else "misses"] += value
        elif name == "wedsync_circuit_breaker_state":
            totals["breakers"][labels["name"]] = max(
                totals["breakers"].get(labels["name"], 0), value
            )
        elif name == "wedsync_celery_tasks_total" and labels.get("outcome") == "failure":
            totals["task_failures"] += value
    return totals


# --- other hosts: their /metrics (METRICS_PEERS) -------------------------------------------

# The METRICS_PEERS entry that means this host's own metric files.
LOCAL = "local"
# Seconds a reading of every peer may take, all in parallel: the live figures go out every
# MONITORING_LIVE_INTERVAL (5 s), and a /metrics answers in milliseconds; a peer slower
# than this is counted as failed rather than holding the dashboard back.
PEER_TIMEOUT_S = 2.0
# A /metrics body is tens of kB (labels are bounded sets): a guard, not a size.
PEER_MAX_BYTES = 16 * 1024 * 1024
# Threads reading peers at once (KEDA's maximum is 40 web pods and 20 worker pods).
PEER_THREADS = 16
# Families of a /metrics body that ``totals_from_samples`` does not read.
_UNREAD = ("wedsync_http_", "wedsync_celery_task_duration_", "wedsync_acks_")
# The counters ``derive`` takes rates and ratios from, kept per peer (``by_peer``).
_RATE_COUNTERS = ("frames", "errors", "deliveries", "publishes", "connects")


@dataclass(frozen=True)
class Peer:
    """One server process's ``/metrics`` to read; ``key`` (``10.0.0.5:8000``) names the
    same host across readings, so that its counters are compared with its own."""

    key: str
    url: str


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve_peers(entries: Iterable[str]) -> tuple[list[Peer], dict[str, str]]:
    """The ``/metrics`` endpoints ``METRICS_PEERS`` names now, and the entries that gave
    none, with why. ``http(s)://HOST:PORT`` as given (``/metrics`` unless it has a path);
    ``dns:NAME:PORT`` one per address NAME resolves to (a headless Service: every ready
    pod), resolved at every reading because pods come and go. Endpoints named twice are
    read once."""
    peers: dict[str, Peer] = {}
    failed: dict[str, str] = {}
    for entry in (e.strip() for e in entries):
        if not entry or entry == LOCAL:
            continue
        if entry.startswith("dns:"):
            name, _, port = entry[4:].rpartition(":")
            if not name or not port.isdigit():
                failed[entry] = "not dns:NAME:PORT"
                continue
            try:
                infos = socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
            except OSError as exc:
                failed[entry] = f"does not resolve: {exc}"
                continue
            for address in sorted({info[4][0] for info in infos}):
                key = _hostport(address, int(port))
                peers.setdefault(key, Peer(key, f"http://{key}/metrics"))
            continue
        parts = urlsplit(entry)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            failed[entry] = "not a URL (http://HOST:PORT), dns:NAME:PORT or local"
            continue
        key = _hostport(parts.hostname, port)
        path = parts.path if parts.path not in ("", "/") else "/metrics"
        peers.setdefault(key, Peer(key, f"{parts.scheme}://{key}{path}"))
    return list(peers.values()), failed


def _is_this_host(peer: Peer) -> bool:
    """Whether the peer is at a (non-loopback) address of this machine: then its /metrics
    adds up the very files ``local`` reads. Binding to an address succeeds only where it
    is assigned. Loopback is left out: every process of the machine shares it, whatever
    metrics folder each has (a test's servers, a second stack)."""
    try:
        infos = socket.getaddrinfo(urlsplit(peer.url).hostname, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        if ipaddress.ip_address(sockaddr[0].split("%")[0]).is_loopback:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((sockaddr[0], 0))
            except OSError:
                continue
            return True
    return False


def fetch_metrics(peer: Peer, *, token: str, host: str, timeout: float) -> str:
    """One peer's ``/metrics`` text; raises OSError (or HTTPException) when it has none.

    Authenticated as Prometheus is (``Authorization: Bearer METRICS_TOKEN``). Django
    answers a ``Host`` outside ALLOWED_HOSTS with 400, so the Host is ``host`` when given,
    else the peer's own address, as Prometheus sends it (the pods list their IP)."""
    parts = urlsplit(peer.url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=timeout)
    headers = {"Accept": "text/plain"}
    if host:
        headers["Host"] = host
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request("GET", parts.path or "/metrics", headers=headers)
        response = connection.getresponse()
        body = response.read(PEER_MAX_BYTES + 1)
    finally:
        connection.close()
    if response.status != 200:
        raise OSError(f"HTTP {response.status}")
    if len(body) > PEER_MAX_BYTES:
        raise OSError(f"more than {PEER_MAX_BYTES} bytes")
    return body.decode()


def _parsed(text: str) -> list[Sample]:
    """The samples of a /metrics body, but those of families the totals never read: they
    are most of the body (a histogram per HTTP route), and parsing costs ~10 µs a line."""
    wanted = (
        line for line in text.splitlines()
        if not (line[7:] if line.startswith(("# HELP ", "# TYPE ")) else line).startswith(_UNREAD)
    )  # fmt: skip
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families("\n".join(wanted) + "\n")
        for sample in family.samples
    ]


def _read_all(peers: list[Peer], *, token: str, host: str, timeout: float
              ) -> tuple[dict[str, list[Sample]], dict[str, str]]:  # fmt: skip
    """Every peer's samples, read in parallel within ``timeout``; the failed, with why."""
    read: dict[str, list[Sample]] = {}
    failed: dict[str, str] = {}
    if not peers:
        return read, failed
    pool = ThreadPoolExecutor(min(PEER_THREADS, len(peers)), thread_name_prefix="metrics-peer")
    try:
        futures = {
            pool.submit(fetch_metrics, peer, token=token, host=host, timeout=timeout): peer
            for peer in peers
        }
        # A thread's socket timeout is per call (connect, each read): the deadline is not.
        wait(futures, timeout=timeout + 0.5)
        for future, peer in futures.items():
            if not future.done():
                failed[peer.key] = f"no answer within {timeout} s"
                continue
            try:
                read[peer.key] = _parsed(future.result())
            except (OSError, http.client.HTTPException, UnicodeDecodeError, ValueError) as exc:
                failed[peer.key] = str(exc) or type(exc).__name__
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return read, failed


def _rate_counters(totals: dict[str, Any]) -> dict[str, float]:
    """The counters ``derive`` compares between readings, flat (``latency/0.05``,
    ``cache/l1/hits``): what is kept of each peer to compare it with itself next time."""
    flat = {name: totals[name] for name in _RATE_COUNTERS}
    for le, count in totals["latency"]["buckets"].items():
        flat[f"latency/{le}"] = count
    for tier, counts in totals["cache"].items():
        flat[f"cache/{tier}/hits"] = counts["hits"]
        flat[f"cache/{tier}/misses"] = counts["misses"]
    return flat


def totals_of_hosts(by_host: dict[str, list[Sample]]) -> dict[str, Any]:
    """Several hosts' samples added up like one host's processes, with each host's own
    rate counters (``by_peer``) for ``derive`` to compare it with itself."""
    totals = totals_from_samples(itertools.chain.from_iterable(by_host.values()))
    totals["by_peer"] = {
        key: _rate_counters(totals_from_samples(samples)) for key, samples in by_host.items()
    }
    return totals


def read_totals_from_peers(
    peers: Iterable[str] | None = None,
    *,
    token: str | None = None,
    host: str | None = None,
    timeout: float = PEER_TIMEOUT_S,
    local_path: Path | None = None,
) -> dict[str, Any]:
    """The server processes' metrics of every host ``peers`` (default ``METRICS_PEERS``)
    names, and this host's own files where it lists ``local``, added up as
    ``read_totals`` adds up one host's processes.

    Also in the result: ``peers`` ``{"read", "failed": {peer: why}, "skipped",
    "partial"}``, and ``by_peer``, each host's counters, so that ``derive`` compares every
    host with itself (a pod that left or did not answer is not a counter reset). A peer
    that fails makes the figures ``partial`` (logged as a warning): they cover the others
    only. A peer at an address of this host is skipped when ``local`` is listed: its
    /metrics would add up the same files again.
    """
    entries = [e.strip() for e in (settings.METRICS_PEERS if peers is None else peers)]
    token = settings.METRICS_TOKEN if token is None else token
    host = settings.METRICS_PEERS_HOST if host is None else host
    local = LOCAL in entries
    endpoints, failed = resolve_peers(entries)
    skipped = [peer.key for peer in endpoints if local and _is_this_host(peer)]
    endpoints = [peer for peer in endpoints if peer.key not in skipped]
    by_host, unread = _read_all(endpoints, token=token, host=host, timeout=timeout)
    failed.update(unread)
    if local:
        path = local_path or metrics.metrics_dir()
        prune_dead_processes(path)
        # Named by this machine: whichever worker takes the next reading, a host's
        # counters are compared with that host's own.
        by_host[f"{LOCAL}:{socket.gethostname()}"] = list(_samples(multiprocess_registry(path)))
    totals = totals_of_hosts(by_host)
    totals["peers"] = {
        "read": len(by_host), "failed": failed, "skipped": skipped, "partial": bool(failed),
    }  # fmt: skip
    if failed:
        logger.warning(
            "metrics: %d of %d peers unread, the figures are partial: %s",
            len(failed), len(failed) + len(by_host),
            "; ".join(f"{peer}: {why}" for peer, why in sorted(failed.items())),
        )  # fmt: skip
    return totals


def read_deployment_totals() -> dict[str, Any]:
    """The totals the minute snapshot and the live figures take: from ``METRICS_PEERS``
    when set, else this host's files (one host, Compose: every process shares them)."""
    return read_totals_from_peers() if settings.METRICS_PEERS else read_totals()


# --- figures from two readings -------------------------------------------------------------


def _delta(current: float, previous: float | None) -> float:
    """A counter's increase; a smaller value means the files were reset: count from 0."""
    if previous is None or current < previous:
        return current
    return current - previous


def quantile(q: float, buckets: dict[str, float]) -> float | None:
    """The ``q`` quantile of cumulative histogram buckets ({le: count}), interpolated
    within a bucket like Prometheus's histogram_quantile; None without observations."""
    bounds = sorted(((math.inf if le == "+Inf" else float(le)), n) for le, n in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in bounds:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _ratio(hits: float, misses: float, minimum: float = 1) -> float | None:
    total = hits + misses
    return hits / total if total >= minimum and total > 0 else None


def derive(previous: dict[str, Any] | None, current: dict[str, Any], seconds: float | None
           ) -> dict[str, Any]:  # fmt: skip
    """What happened between two readings ``seconds`` apart, and the gauges now.

    Rates are per second; ``error_rate`` is error replies per frame received;
    ``latency`` holds p50/p95/p99 in seconds of the deliveries in between; cache hit
    ratios per tier and combined (a read served by either tier). A figure without
    data in the interval is None.

    Readings of several hosts (``by_peer``) are compared host by host, as Prometheus's
    ``sum(rate(...))`` does: a host that left or did not answer takes its counters out of
    both readings instead of looking like a counter reset, a host new since the previous
    reading counts from this one, and with no host in both there are no rates.
    """
    if previous is not None and ("by_peer" in current or "by_peer" in previous):
        previous, common = _aligned(previous.get("by_peer"), current)
        if not common:
            seconds = None
    prev = previous or {}
    span = seconds if seconds and seconds > 0 else None

    def rate(key: str) -> float | None:
        if span is None:
            return None
        return _delta(current.get(key, 0), prev.get(key) if previous else None) / span

    frames = _delta(current.get("frames", 0), prev.get("frames") if previous else None)
    errors = _delta(current.get("errors", 0), prev.get("errors") if previous else None)
    prev_buckets = prev.get("latency", {}).get("buckets", {}) if previous else {}
    buckets = {
        le: _delta(n, prev_buckets.get(le) if previous else None)
        for le, n in current.get("latency", {}).get("buckets", {}).items()
    }
    cache: dict[str, Any] = {}
    for tier in ("l1", "l2"):
        now_tier = current.get("cache", {}).get(tier, {})
        prev_tier = prev.get("cache", {}).get(tier, {}) if previous else {}
        hits = _delta(now_tier.get("hits", 0), prev_tier.get("hits") if previous else None)
        misses = _delta(now_tier.get("misses", 0), prev_tier.get("misses") if previous else None)
        cache[tier] = {"hits": hits, "misses": misses, "hit_ratio": _ratio(hits, misses)}
    l1, l2 = cache["l1"], cache["l2"]
    # Every read asks L1 first; an L1 miss asks L2 (when there is one).
    reads = l1["hits"] + l1["misses"]
    served = l1["hits"] + l2["hits"]
    cache["combined"] = {"reads": reads, "hit_ratio": served / reads if reads else None}
    return {
        "connections": current.get("connections", 0),
        "subscriptions": current.get("subscriptions", 0),
        "presence": current.get("presence", 0),
        "outbox_depth": current.get("outbox_depth", 0),
        "outbox_depth_max": current.get("outbox_depth_max", 0),
        "deliveries_per_s": rate("deliveries"),
        "publishes_per_s": rate("publishes"),
        "frames_per_s": rate("frames"),
        "connects_per_s": rate("connects"),
        "frames": frames,
        "errors": errors,
        "error_rate": errors / frames if frames else None,
        "latency_samples": buckets.get("+Inf", 0),
        "latency": {
            "p50": quantile(0.50, buckets),
            "p95": quantile(0.95, buckets),
            "p99": quantile(0.99, buckets),
        },
        "cache": cache,
        "breakers": dict(current.get("breakers", {})),
        "server_cpu": current.get("server_cpu"),
        "breakers_open": sum(1 for state in current.get("breakers", {}).values() if state >= 2),
        "peers": current.get("peers"),
    }


def _aligned(before: dict[str, Any] | None, current: dict[str, Any]
             ) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """The previous reading's counters re-added over the hosts ``current`` read, each
    host's own (0 after its reset, its current value when it is new: no increase yet),
    and whether any host is in both readings. Counter values are whole counts, so these
    sums equal the current totals' exactly and never look like a reset themselves."""
    now = current.get("by_peer")
    if not now or not before:
        return current, False
    base: dict[str, float] = {}
    common = False
    for key, counters in now.items():
        old = before.get(key)
        common = common or old is not None
        for path, value in counters.items():
            start = value if old is None else old.get(path, 0.0)
            base[path] = base.get(path, 0.0) + (0.0 if start > value else start)
    aligned: dict[str, Any] = {name: base.get(name, 0.0) for name in _RATE_COUNTERS}
    aligned["latency"] = {"buckets": {}}
    aligned["cache"] = {}
    for path, value in base.items():
        kind, _, rest = path.partition("/")
        if kind == "latency":
            aligned["latency"]["buckets"][rest] = value
        elif kind == "cache":
            tier, _, field = rest.partition("/")
            aligned["cache"].setdefault(tier, {"hits": 0.0, "misses": 0.0})[field] = value
    return aligned, common
