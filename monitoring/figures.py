"""The host's metrics added up across processes, and the figures derived from two readings.

``read_totals()`` reads every process's metric files (prometheus_client's
``MultiProcessCollector``) into plain numbers: the gauges now and the counters since the
files were created. ``derive(previous, current)`` turns two readings into what staff look
at: deliveries per second, error rate, latency percentiles, cache hit ratios. Both are
pure data in and out (msgpack-able), so readings can be cached and stored in a
``MetricSnapshot``.

Before reading, the live gauges of processes that died without saying so (SIGKILL, a
crash) are dropped (``prune_dead_processes``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from core import metrics

_FILE_PID = re.compile(r"[a-z_]+_(\d+)\.db")


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


def _samples(registry: CollectorRegistry) -> Iterable[tuple[str, dict[str, str], float]]:
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def read_totals(path: Path | None = None) -> dict[str, Any]:
    """Every process's metrics of this host, added up, as plain numbers."""
    path = path or metrics.metrics_dir()
    prune_dead_processes(path)
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
        "wedsync_outbox_depth_max": "outbox_depth_max",
        "wedsync_ws_connects_total": "connects",
        "wedsync_ws_frames_in_total": "frames",
        "wedsync_events_published_total": "publishes",
        "wedsync_event_deliveries_total": "deliveries",
        "wedsync_replays_total": "replays",
        "wedsync_replayed_events_total": "replayed",
        "wedsync_rate_limited_total": "rate_limited",
        "wedsync_celery_tasks_total": "tasks",
    }
    for name, labels, value in _samples(multiprocess_registry(path)):
        if name in simple:
            totals[simple[name]] += value
        if name == "wedsync_server_cpu_ratio":
            totals["server_cpu"] = max(value, totals["server_cpu"] or 0.0)
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
    """
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
    }
