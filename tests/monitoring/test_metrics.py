"""Metrics in one process and across processes' files (core/metrics.py, monitoring/figures.py).

In-process values are read from this process's own samples (``metrics.local_value``):
other test runs on the machine write to the same directory, and only what this process
counted is this test's.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from celery import shared_task
from django.conf import settings
from django.db import transaction

from core import metrics
from core.breaker import CircuitBreaker, redis_breaker
from core.cache import get_cache
from monitoring import figures
from monitoring.tasks import publish_live
from realtime.errors import RealtimeError
from realtime.limits import PublishLimiter
from realtime.services import event_publish, event_publish_system
from tests.factories import make_booking, make_supplier, make_user, make_wedding

PUBLISHED = "wedsync_events_published_total"


def published(event: str, priority: str = "normal") -> float:
    return metrics.local_value(PUBLISHED, {"event": event, "priority": priority})


@pytest.mark.django_db(transaction=True)
def test_publish__counted_by_event_and_priority_once_committed() -> None:
    # given: a vendor booked on a wedding
    vendor = make_user()
    wedding = make_wedding()
    make_booking(supplier=make_supplier(users=(vendor,)), wedding=wedding)
    before_msg, before_emergency = (
        published("message.posted"),
        published("emergency.raised", "critical"),
    )

    # when: two messages and an emergency are published
    for text in ("on our way", "parked"):
        event_publish(
            topic=wedding.topic, event="message.posted", payload={"text": text}, user=vendor
        )
    event_publish(
        topic=wedding.topic,
        event="emergency.raised",
        payload={"kind": "medical", "text": "guest fainted"},
        user=vendor,
    )

    # then
    assert published("message.posted") == before_msg + 2
    assert published("emergency.raised", "critical") == before_emergency + 1


@pytest.mark.django_db(transaction=True)
def test_publish__rolled_back_publish_is_not_counted() -> None:
    before = published("ops.note")

    with pytest.raises(RuntimeError), transaction.atomic():
        event_publish_system("ops", "ops.note", {"text": "x"})
        raise RuntimeError("the caller failed after publishing")

    assert published("ops.note") == before
    event_publish_system("ops", "ops.note", {"text": "y"})
    assert published("ops.note") == before + 1


@pytest.mark.django_db
def test_rate_limit__each_refusal_is_counted() -> None:
    limiter = PublishLimiter(rate=1, burst=2, strikes=0)
    before = metrics.local_value("wedsync_rate_limited_total")

    refused = 0
    for _ in range(5):
        try:
            limiter.check("message.posted", now=10.0)
        except RealtimeError:
            refused += 1

    assert refused == 3
    assert metrics.local_value("wedsync_rate_limited_total") == before + 3


def test_breaker__state_gauge_and_opens_counted_through_its_hook() -> None:
    # given: a process breaker (named for this test) that fails its threshold
    name = "test-metrics-breaker"
    breaker = redis_breaker(name)
    opens = metrics.local_value("wedsync_circuit_breaker_opens_total", {"name": name})

    def refuse() -> None:
        raise ConnectionRefusedError("refused")

    for _ in range(breaker.failure_threshold):
        with pytest.raises(OSError):
            breaker.call(refuse)

    # then: open is 2 and one opening counted; a reset reports closed (0)
    state = {"name": name}
    assert metrics.local_value("wedsync_circuit_breaker_state", state) == 2
    assert metrics.local_value("wedsync_circuit_breaker_opens_total", state) == opens + 1
    breaker.reset()
    assert metrics.local_value("wedsync_circuit_breaker_state", state) == 0


def test_breaker__a_failing_hook_never_breaks_the_call() -> None:
    def broken_hook(old: str, new: str) -> None:
        raise ValueError("metrics down")

    breaker = CircuitBreaker(name="x", failure_threshold=1, on_change=broken_hook)
    with pytest.raises(OSError):
        breaker.call(lambda: (_ for _ in ()).throw(OSError("down")))
    assert breaker.state == "open"


def test_sampler__copies_cache_counters_once_per_change() -> None:
    # given: this process's cache with 2 misses and 3 hits in L1
    cache = get_cache()
    metrics.sample_now()  # the baseline of this cache object
    hits = metrics.local_value("wedsync_cache_requests_total", {"tier": "l1", "result": "hit"})
    misses = metrics.local_value("wedsync_cache_requests_total", {"tier": "l1", "result": "miss"})
    cache.get("a")
    cache.get("b")
    cache.set("a", 1)
    for _ in range(3):
        cache.get("a")

    # when: sampled twice
    metrics.sample_now()
    metrics.sample_now()

    # then: the increase is counted once
    labels = {"tier": "l1"}
    assert metrics.local_value("wedsync_cache_requests_total", {**labels, "result": "hit"}) == (
        hits + 3
    )
    miss_now = metrics.local_value("wedsync_cache_requests_total", {**labels, "result": "miss"})
    assert miss_now >= misses + 2  # L2's own lookups may miss as well, never fewer


def test_labels__unknown_values_are_bounded_to_other() -> None:
    before = metrics.local_value("wedsync_ws_frames_in_total", {"type": "other"})
    metrics.frame_in("made-up-" + "x" * 50)
    metrics.error("no_such_code")
    metrics.connection_closed(4321)

    assert metrics.local_value("wedsync_ws_frames_in_total", {"type": "other"}) == before + 1
    assert metrics.local_value("wedsync_ws_errors_total", {"code": "other"}) >= 1
    assert metrics.local_value("wedsync_ws_closes_total", {"code": "other"}) >= 1


# --- figures -------------------------------------------------------------------------------


def test_quantile__interpolates_within_the_bucket_like_prometheus() -> None:
    buckets = {"0.1": 50, "0.5": 90, "1.0": 100, "+Inf": 100}

    assert figures.quantile(0.5, buckets) == pytest.approx(0.1)
    assert figures.quantile(0.7, buckets) == pytest.approx(0.3)
    assert figures.quantile(0.95, buckets) == pytest.approx(0.75)
    assert figures.quantile(0.5, {"0.1": 0, "+Inf": 0}) is None
    assert figures.quantile(0.99, {"0.1": 1, "+Inf": 10}) == 0.1  # beyond the last bound


def _totals(**values: object) -> dict:
    base = {
        "connections": 0, "frames": 0, "errors": 0, "deliveries": 0, "publishes": 0,
        "latency": {"buckets": {}, "count": 0, "sum": 0},
        "cache": {"l1": {"hits": 0, "misses": 0}, "l2": {"hits": 0, "misses": 0}},
        "breakers": {},
    }  # fmt: skip
    base.update(values)
    return base


def test_derive__rates_ratios_and_percentiles_of_the_interval() -> None:
    before = _totals(
        deliveries=100, frames=1000, errors=10,
        latency={"buckets": {"0.05": 100, "0.5": 100, "+Inf": 100}},
        cache={"l1": {"hits": 10, "misses": 10}, "l2": {"hits": 5, "misses": 5}},
    )  # fmt: skip
    after = _totals(
        connections=7, deliveries=700, frames=1100, errors=15,
        latency={"buckets": {"0.05": 150, "0.5": 200, "+Inf": 200}},
        cache={"l1": {"hits": 90, "misses": 30}, "l2": {"hits": 15, "misses": 15}},
        breakers={"presence": 2, "connections": 0},
    )  # fmt: skip

    out = figures.derive(before, after, 60)

    assert out["connections"] == 7
    assert out["deliveries_per_s"] == pytest.approx(10.0)
    assert out["error_rate"] == pytest.approx(0.05)
    assert out["latency"]["p50"] == pytest.approx(0.05)  # 50 of 100 fell in the first bucket
    assert out["cache"]["l1"]["hit_ratio"] == pytest.approx(80 / 100)
    assert out["cache"]["combined"]["hit_ratio"] == pytest.approx((80 + 10) / 100)
    assert out["breakers_open"] == 1


def test_derive__counters_that_fell_were_reset_and_count_from_zero() -> None:
    out = figures.derive(_totals(deliveries=1000), _totals(deliveries=30), 10)

    assert out["deliveries_per_s"] == pytest.approx(3.0)


# --- across processes ----------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, sys
    from prometheus_client import Counter, Gauge
    Gauge("t_open", "open", multiprocess_mode="livesum").set(int(sys.argv[1]))
    Counter("t_done", "done").inc(int(sys.argv[1]))
    if sys.argv[2] == "wait":
        sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.read()
    os._exit(0)  # no goodbye: like a crash
    """
)


def _child(directory: Path, n: int, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(n), mode],
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _read(directory: Path) -> dict[str, float]:
    registry = figures.multiprocess_registry(directory)
    return {s.name: s.value for f in registry.collect() for s in f.samples}


def test_files__processes_add_up_and_a_dead_one_leaves_the_gauges(tmp_path: Path) -> None:
    # given: one process still running (3 open) and one that died (4 open, no goodbye)
    alive = _child(tmp_path, 3, "wait")
    assert alive.stdout.readline().strip() == "ready"
    dead = _child(tmp_path, 4, "exit")
    dead.wait(10)
    try:
        assert _read(tmp_path)["t_open"] == 7  # before pruning, the dead one still counts

        # when
        pruned = figures.prune_dead_processes(tmp_path)

        # then: the dead process's gauge is gone, its counter still counts
        assert pruned == [dead.pid]
        values = _read(tmp_path)
        assert values["t_open"] == 3
        assert values["t_done_total"] == 7

        # and with counters=True its files go too (the totals fall)
        figures.prune_dead_processes(tmp_path, counters=True)
        assert _read(tmp_path)["t_done_total"] == 3
        assert not list(tmp_path.glob(f"*_{dead.pid}.db"))
    finally:
        alive.communicate("", timeout=10)


# --- Celery --------------------------------------------------------------------------------


@shared_task(name="tests.monitoring.boom")
def boom() -> None:
    raise ValueError("boom")


def _tasks(task: str, outcome: str) -> float:
    return metrics.local_value("wedsync_celery_tasks_total", {"task": task, "outcome": outcome})


@pytest.mark.django_db(transaction=True)
def test_celery__runs_counted_by_outcome_with_their_duration() -> None:
    ok, failed = _tasks("monitoring.tasks.publish_live", "success"), _tasks(boom.name, "failure")
    durations = metrics.local_value(
        "wedsync_celery_task_duration_seconds_count", {"task": "monitoring.tasks.publish_live"}
    )

    publish_live.apply()
    boom.apply()

    assert _tasks("monitoring.tasks.publish_live", "success") == ok + 1
    assert _tasks(boom.name, "failure") == failed + 1
    assert (
        metrics.local_value(
            "wedsync_celery_task_duration_seconds_count", {"task": "monitoring.tasks.publish_live"}
        )
        == durations + 1
    )


def test_beat__monitoring_entries_expire_before_their_next_run() -> None:
    schedule = settings.CELERY_BEAT_SCHEDULE
    snapshot, live = schedule["monitoring-snapshot"], schedule["monitoring-live"]

    assert snapshot["task"] == "monitoring.tasks.record_snapshot" and snapshot["schedule"] == 60
    assert 0 < snapshot["options"]["expires"] < snapshot["schedule"]
    assert live["task"] == "monitoring.tasks.publish_live"
    assert 0 < live["options"]["expires"] <= live["schedule"]


def test_sampler__process_cpu_between_two_samples_reaches_the_totals() -> None:
    # given: a first sample, then some work in this process
    metrics.sample_now()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass

    # when
    metrics.sample_now()

    # then: the gauge holds this process's CPU share (a busy loop: most of a core), and the
    # host's totals report the busiest process
    cpu = metrics.local_value("wedsync_server_cpu_ratio")
    assert 0.0 < cpu <= 1.5
    assert figures.read_totals()["server_cpu"] >= cpu * 0.99
