"""Reads of monitoring: live figures, history, alerts, today's weddings, overdue acks.

``metrics_overview()`` is the metrics API's body (PROTOCOL §9), cached for
``OVERVIEW_TTL`` seconds in the shared cache so that many dashboards cost one reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone

from core import metrics
from core.cache import get_cache
from core.wire import wire_time
from realtime import selectors as realtime_selectors
from realtime.connection_counts import get_connection_counter, supplier_limit
from realtime.models import Ack, Event
from realtime.presence import get_presence_store
from scaling.decisions import CurrentMetrics
from scaling.demand import Observation
from scaling.emergency import FastReading
from scaling.selectors import (
    decision_payload,
    recent_decisions,
    reservation_payload,
    upcoming_reservations,
    wedding_day_mode,
)
from weddings.models import Booking, Supplier, SupplierMembership, Wedding

from . import figures
from .models import Alert, AlertRule, MetricSnapshot
from .rules import RULES

OVERVIEW_KEY = "monitoring:overview:v1"
OVERVIEW_TTL = 10  # seconds; the "cached ~10 s"
# The last overview read, kept this long (in the shared cache and in the process): what
# the metrics API answers, marked stale, while the database is unreachable.
LAST_OVERVIEW_TTL = 24 * 3600
_last_overview: dict[int, dict[str, Any]] = {}
# Two readings closer than this give rates too noisy to show; the last figures are reused.
LIVE_MIN_WINDOW_S = 1.0
HISTORY_MINUTES = 60
# The history lengths the API accepts (``?minutes=``): each is its own cache entry.
MINUTE_CHOICES = (15, 60, 180, 360, 1440)
# Ack-required events older than this are not chased any more.
ACK_LOOKBACK = dt.timedelta(hours=24)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else wire_time(value)


# --- figures -------------------------------------------------------------------------------


# The previous reading per metrics directory (or peer list), in this process: any two
# readings of the same directory give valid rates, whichever process took them.
_previous: dict[str, dict[str, Any]] = {}
_previous_lock = threading.Lock()


def live_figures(*, path: Path | None = None) -> dict[str, Any]:
    """The deployment's figures now: gauges, and rates since this process's previous
    reading (at least ``LIVE_MIN_WINDOW_S`` ago), or since the latest snapshot without one.
    Read from ``METRICS_PEERS`` when set (every pod's /metrics), else from this host's
    files; ``path``: that metrics directory instead (tests)."""
    peers = settings.METRICS_PEERS if path is None else []
    source = "peers:" + ",".join(peers) if peers else str(path or metrics.metrics_dir())
    now = time.time()
    with _previous_lock:
        previous = _previous.get(source)
    if previous and now - previous["at"] < LIVE_MIN_WINDOW_S:
        return previous["figures"]
    totals = figures.read_totals_from_peers(peers) if peers else figures.read_totals(Path(source))
    if previous is None and (snapshot := latest_snapshot()) is not None and snapshot.totals:
        previous = {"at": snapshot.taken_at.timestamp(), "totals": snapshot.totals}
    seconds = now - previous["at"] if previous else None
    derived = figures.derive(previous["totals"] if previous else None, totals, seconds)
    derived["at"] = wire_time(dt.datetime.fromtimestamp(now, dt.UTC))
    derived["window_s"] = seconds
    with _previous_lock:
        _previous[source] = {"at": now, "totals": totals, "figures": derived}
    return derived


def supplier_utilisation() -> dict[str, Any]:
    """The busiest supplier's open connections against the per-supplier limit in force."""
    wedding_day = bool(wedding_day_mode()["enabled"])
    limit = supplier_limit(wedding_day)
    totals = async_to_sync(get_connection_counter().totals)("supplier")
    if not totals:
        return {"ratio": 0.0, "supplier_id": None, "connections": 0, "limit": limit}
    supplier_id, count = max(totals.items(), key=lambda kv: (kv[1], -kv[0]))
    return {
        "ratio": count / limit if limit else 0.0,
        "supplier_id": supplier_id,
        "connections": count,
        "limit": limit,
    }


def snapshot_as_dict(snapshot: MetricSnapshot) -> dict[str, Any]:
    """One history point as the API and the dashboard's charts take it."""
    return {
        "at": _iso(snapshot.taken_at),
        "connections": snapshot.connections,
        "subscriptions": snapshot.subscriptions,
        "deliveries_per_s": snapshot.deliveries_per_s,
        "publishes_per_s": snapshot.publishes_per_s,
        "error_rate": snapshot.error_rate,
        "latency": {
            "p50": snapshot.latency_p50,
            "p95": snapshot.latency_p95,
            "p99": snapshot.latency_p99,
        },
        "cache": {
            "l1": snapshot.cache_hit_ratio_l1,
            "l2": snapshot.cache_hit_ratio_l2,
            "combined": snapshot.cache_hit_ratio,
        },
        "breakers_open": snapshot.breakers_open,
        "supplier_utilisation": snapshot.supplier_utilisation,
        "wedding_day_mode": snapshot.wedding_day_mode,
    }


def snapshot_history(*, minutes: int = HISTORY_MINUTES, now: dt.datetime | None = None
                     ) -> list[dict[str, Any]]:  # fmt: skip
    """The minute snapshots of the last ``minutes``, oldest first."""
    since = (now or timezone.now()) - dt.timedelta(minutes=minutes)
    rows = MetricSnapshot.objects.filter(taken_at__gte=since).order_by("taken_at")
    return [snapshot_as_dict(s) for s in rows.defer("totals")]


def latest_snapshot() -> MetricSnapshot | None:
    return MetricSnapshot.objects.order_by("-taken_at", "-id").first()


def live_point(live: dict[str, Any]) -> dict[str, Any]:
    """A live reading in the shape of a history point (what `metrics.live` carries)."""
    cache_figures = live["cache"]
    return {
        "at": live["at"],
        "connections": live["connections"],
        "subscriptions": live["subscriptions"],
        "deliveries_per_s": live["deliveries_per_s"],
        "publishes_per_s": live["publishes_per_s"],
        "error_rate": live["error_rate"],
        "latency": live["latency"],
        "cache": {
            "l1": cache_figures["l1"]["hit_ratio"],
            "l2": cache_figures["l2"]["hit_ratio"],
            "combined": cache_figures["combined"]["hit_ratio"],
        },
        "breakers_open": live["breakers_open"],
        "outbox_depth": live["outbox_depth"],
    }


# --- alerts --------------------------------------------------------------------------------


def alert_thresholds() -> dict[str, dict[str, Any]]:
    """``{rule: {"warning", "critical", "enabled", "direction", "unit", "title"}}``: the
    admin's rows, or the settings' defaults for a rule without one."""
    rows = {rule.key: rule for rule in AlertRule.objects.all()}
    out = {}
    for key, spec in RULES.items():
        default = settings.MONITORING_ALERT_RULES[key]
        row = rows.get(key)
        out[key] = {
            "title": spec.title,
            "description": spec.description,
            "unit": spec.unit,
            "direction": spec.direction,
            "warning": row.warning if row else default["warning"],
            "critical": row.critical if row else default["critical"],
            "enabled": row.enabled if row else True,
        }
    return out


def alert_as_dict(alert: Alert) -> dict[str, Any]:
    """An alert as the API, the ops topic and the dashboard show it."""
    spec = RULES.get(alert.rule)
    return {
        "id": alert.pk,
        "rule": alert.rule,
        "title": spec.title if spec else alert.rule,
        "subject": alert.subject,
        "severity": alert.severity,
        "escalation": alert.escalation,
        "status": alert.status,
        "value": alert.value,
        "message": alert.message,
        "opened_at": _iso(alert.opened_at),
        "acknowledged_at": _iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by.get_username() if alert.acknowledged_by else None,
        "resolved_at": _iso(alert.resolved_at),
    }


def open_alerts() -> list[Alert]:
    """Unresolved alerts, critical first, then the oldest."""
    rows = Alert.objects.filter(resolved_at__isnull=True).select_related("acknowledged_by")
    return sorted(rows, key=lambda a: (a.severity != Alert.Severity.CRITICAL, a.opened_at, a.pk))


# --- weddings ------------------------------------------------------------------------------


def todays_weddings(*, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Weddings whose date is today in their own time zone, with their booked suppliers
    and how many of each supplier's people are on the wedding's topic right now."""
    now = now or timezone.now()
    candidates = (
        Wedding.objects.exclude(status=Wedding.Status.CANCELLED)
        .filter(date__gte=(now - dt.timedelta(days=1)).date(),
                date__lte=(now + dt.timedelta(days=1)).date())
        .order_by("date", "ceremony_time", "id")
    )  # fmt: skip
    weddings = [w for w in candidates if w.date == now.astimezone(w.zone).date()]
    if not weddings:
        return []
    bookings = (
        Booking.objects.filter(wedding__in=weddings, active=True)
        .select_related("supplier")
        .order_by("supplier__name", "supplier_id")
    )
    booked: dict[int, list[Supplier]] = defaultdict(list)
    for booking in bookings:
        booked[booking.wedding_id].append(booking.supplier)
    present = async_to_sync(_present_by_topic)([w.topic for w in weddings])
    out = []
    for wedding in weddings:
        people: dict[int, int] = defaultdict(int)
        for member in present.get(wedding.topic, []):
            if member.get("supplier_id") is not None:
                people[member["supplier_id"]] += 1
        suppliers = [
            {"id": s.pk, "name": s.name, "category": s.category, "connected": people.get(s.pk, 0)}
            for s in booked[wedding.pk]
        ]
        out.append(
            {
                "id": wedding.pk,
                "topic": wedding.topic,
                "couple": wedding.couple_names,
                "venue": wedding.venue_name,
                "ceremony": wedding.ceremony_time.strftime("%H:%M"),
                "time_zone": wedding.time_zone,
                "status": wedding.status,
                "suppliers": suppliers,
                "connected_suppliers": sum(1 for s in suppliers if s["connected"]),
            }
        )
    return out


async def _present_by_topic(topics: list[str]) -> dict[str, list[dict]]:
    store = get_presence_store()

    async def members(topic: str) -> list[dict]:
        try:
            return await store.members(topic)
        except Exception:  # presence is best effort; a dashboard must still load
            return []

    found = await asyncio.gather(*(members(t) for t in topics))
    return dict(zip(topics, found, strict=True))


# --- acknowledgements ----------------------------------------------------------------------


def overdue_acks(*, now: dt.datetime, minutes: float) -> list[dict[str, Any]]:
    """``ack_required`` events on wedding topics, stored at least ``minutes`` ago (within
    ``ACK_LOOKBACK``), that a supplier expected to acknowledge has not: for a timeline
    shift its ``ack_suppliers``, otherwise every supplier booked on the wedding but the
    author's. An emergency that was resolved meanwhile is no longer chased."""
    events = list(
        Event.objects.filter(
            ack_required=True,
            topic__startswith="wedding:",
            created_at__lte=now - dt.timedelta(minutes=minutes),
            created_at__gte=now - ACK_LOOKBACK,
        ).order_by("created_at", "id")
    )
    if not events:
        return []
    wedding_ids = {int(e.topic.split(":", 1)[1]) for e in events}
    booked: dict[int, set[int]] = defaultdict(set)
    planners: dict[int, list[int]] = defaultdict(list)
    for wedding_id, supplier_id, category in Booking.objects.filter(
        wedding_id__in=wedding_ids, active=True
    ).values_list("wedding_id", "supplier_id", "supplier__category"):
        booked[wedding_id].add(supplier_id)
        if category == Supplier.Category.PLANNER:
            planners[wedding_id].append(supplier_id)
    acks: dict[int, set[int]] = defaultdict(set)
    for event_id, user_id in Ack.objects.filter(event__in=events).values_list(
        "event_id", "user_id"
    ):
        acks[event_id].add(user_id)
    users = set().union(*acks.values()) if acks else set()
    supplier_of: dict[int, set[int]] = defaultdict(set)
    for user_id, supplier_id in SupplierMembership.objects.filter(user_id__in=users).values_list(
        "user_id", "supplier_id"
    ):
        supplier_of[user_id].add(supplier_id)
    resolved = _resolved_emergencies(events)
    all_booked = set().union(*booked.values())
    names = dict(Supplier.objects.filter(pk__in=all_booked).values_list("pk", "name"))
    out = []
    for event in events:
        wedding_id = int(event.topic.split(":", 1)[1])
        if event.event == "emergency.raised" and (event.topic, event.payload.get("id")) in resolved:
            continue
        if event.event == "timeline.shifted":
            expected = set(event.payload.get("ack_suppliers") or []) & booked[wedding_id]
        else:
            expected = booked[wedding_id] - {event.actor_supplier_id}
        acked_by: set[int] = set()
        for user_id in acks[event.pk]:
            acked_by |= supplier_of[user_id]
        missing = sorted(expected - acked_by)
        if not missing:
            continue
        out.append(
            {
                "event": event,
                "subject": f"{event.topic}#{event.seq}",
                "minutes": (now - event.created_at).total_seconds() / 60,
                "missing": [{"id": pk, "name": names.get(pk, f"supplier {pk}")} for pk in missing],
                "planner_supplier_ids": sorted(planners[wedding_id]),
            }
        )
    return out


def overdue_acks_by_wedding(*, now: dt.datetime, minutes: float) -> list[dict[str, Any]]:
    """``overdue_acks`` grouped per wedding topic, oldest event first: one alert (and one
    planner notice) per wedding however many of its events wait. Each group has the
    ``subject`` (the wedding topic), ``items`` (``overdue_acks`` entries, oldest first),
    ``count``, ``oldest`` (the first item), ``minutes`` (the oldest's wait) and the
    wedding's ``planner_supplier_ids``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in overdue_acks(now=now, minutes=minutes):  # oldest first
        groups.setdefault(item["event"].topic, []).append(item)
    return [
        {
            "subject": topic,
            "items": items,
            "count": len(items),
            "oldest": items[0],
            "minutes": max(item["minutes"] for item in items),
            "planner_supplier_ids": items[0]["planner_supplier_ids"],
        }
        for topic, items in groups.items()
    ]


def _resolved_emergencies(events: list[Event]) -> set[tuple[str, Any]]:
    topics = {e.topic for e in events if e.event == "emergency.raised"}
    if not topics:
        return set()
    return realtime_selectors.resolved_emergencies(topics, since=min(e.created_at for e in events))


def planner_emails(supplier_ids: list[int]) -> list[str]:
    """E-mail addresses of the active users of these (planner) suppliers."""
    return sorted(
        set(
            SupplierMembership.objects.filter(supplier_id__in=supplier_ids, user__is_active=True)
            .exclude(user__email="")
            .values_list("user__email", flat=True)
        )
    )


# --- the API's body ------------------------------------------------------------------------


def metrics_overview(*, minutes: int = HISTORY_MINUTES) -> dict[str, Any]:
    """Current figures, recent history, open alerts, thresholds and today's weddings
    (PROTOCOL §9 metrics API), cached ``OVERVIEW_TTL`` seconds."""
    key = f"{OVERVIEW_KEY}:{minutes}"
    cache = get_cache()
    cached = cache.get(key)
    if cached is not None:
        return cached
    live = live_figures()
    latest = latest_snapshot()
    beat_last = latest.taken_at if latest else None
    body = {
        "generated_at": wire_time(timezone.now()),
        "current": {
            **live_point(live),
            "presence": live["presence"],
            "outbox_depth_max": live["outbox_depth_max"],
            "frames_per_s": live["frames_per_s"],
            "breakers": live["breakers"],
            "cache_detail": live["cache"],
            "window_s": live["window_s"],
        },
        "wedding_day_mode": wedding_day_mode(),
        "connections": supplier_utilisation(),
        "beat": {
            "last_snapshot_at": _iso(beat_last),
            "seconds_since": (timezone.now() - beat_last).total_seconds() if beat_last else None,
        },
        "history": snapshot_history(minutes=minutes),
        "alerts": [alert_as_dict(a) for a in open_alerts()],
        "thresholds": alert_thresholds(),
        "escalation": {
            "management_after_minutes": settings.ALERT_ESCALATE_MANAGEMENT_MINUTES,
            "executive_after_minutes": settings.ALERT_ESCALATE_EXECUTIVE_MINUTES,
            "clear_minutes": settings.ALERT_CLEAR_MINUTES,
        },
        "weddings": todays_weddings(),
        "scaling": [
            orjson.loads(orjson.dumps(decision_payload(row))) for row in recent_decisions()
        ],
        # Capacity reserved for the next day's peaks, planned or in force (ADR 0033).
        "reservations": [
            orjson.loads(orjson.dumps(reservation_payload(row))) for row in upcoming_reservations()
        ],
    }
    cache.set(key, body, OVERVIEW_TTL)
    _last_overview[minutes] = body
    # The shared cache down too: the process keeps its own copy.
    with contextlib.suppress(Exception):
        cache.set(f"{key}:last", body, LAST_OVERVIEW_TTL)
    return body


def metrics_overview_stale(*, minutes: int = HISTORY_MINUTES) -> dict[str, Any] | None:
    """The last overview read (by any process, through the shared cache, else by this
    one), marked ``stale_since`` its time: the metrics API's answer while the database is
    unreachable. None when there is none."""
    try:
        body = get_cache().get(f"{OVERVIEW_KEY}:{minutes}:last")
    except Exception:
        body = None
    body = body or _last_overview.get(minutes)
    if body is None:
        return None
    return {
        **body,
        "stale_since": body["generated_at"],
        "stale_reason": "the database is unreachable: these are the last figures read",
    }


def metrics_overview_invalidate() -> None:
    """Forget the cached overview (after a staff action changed what it shows)."""
    cache = get_cache()
    for minutes in MINUTE_CHOICES:
        cache.delete(f"{OVERVIEW_KEY}:{minutes}")


def _partial(snapshot: MetricSnapshot) -> bool:
    """Whether a snapshot's figures miss hosts that did not answer (``METRICS_PEERS``)."""
    peers = (snapshot.totals or {}).get("peers")
    return isinstance(peers, dict) and peers.get("partial") is True


class SnapshotReader:
    """Scaling's reader of the measured load (scaling.readings), from the minute
    snapshots; plugged in by ``MonitoringConfig.ready``.

    A snapshot taken while some hosts of ``METRICS_PEERS`` did not answer
    (``totals["peers"]["partial"]``) counts only the others: read as the deployment's load
    it would look like a drop and scale in exactly when hosts are in trouble. Both reads
    leave such snapshots out (the dashboard shows every snapshot as it was read).
    """

    def history(self, start: dt.datetime, end: dt.datetime) -> list[Observation]:
        rows = (
            MetricSnapshot.objects.filter(taken_at__gte=start, taken_at__lte=end)
            .order_by("taken_at")
            .values_list("taken_at", "connections", "deliveries_per_s", "totals__peers__partial")
        )
        return [
            Observation(at, connections, deliveries)
            for at, connections, deliveries, partial in rows
            if partial is not True
        ]

    def latest(
        self, *, now: dt.datetime, max_age: dt.timedelta
    ) -> tuple[CurrentMetrics, dt.datetime] | None:
        recent = MetricSnapshot.objects.filter(
            taken_at__lte=now, taken_at__gte=now - max_age
        ).order_by("-taken_at", "-id")
        snapshot = next((s for s in recent.iterator() if not _partial(s)), None)
        if snapshot is None:
            return None
        current = CurrentMetrics(
            connections=snapshot.connections,
            deliveries_per_s=snapshot.deliveries_per_s,
            latency_p95_s=snapshot.latency_p95,
            cpu=snapshot.server_cpu,
            error_rate=snapshot.error_rate,
        )
        return current, snapshot.taken_at


# The previous fast reading, shared through the cache: the next one, whichever worker
# process takes it, derives the delivery p95 of the seconds in between. Kept a minute: a
# reading after a longer gap has no p95 (it would mix in a minute of old deliveries).
FAST_PREVIOUS_KEY = "monitoring:fast-reading:v1"
FAST_PREVIOUS_TTL = 60.0


def fast_reading() -> FastReading:
    """Scaling's fast reader (scaling.readings.fast, plugged in ``MonitoringConfig.ready``):
    the server processes' figures now, as they last sampled them (every
    ``METRICS_SAMPLE_INTERVAL``), from ``METRICS_PEERS`` or this host's files, with the
    delivery p95 since the previous fast reading. Read by the emergency check every
    ``SCALING_FAST_INTERVAL`` seconds."""
    totals = figures.read_deployment_totals()
    now = timezone.now()
    cache = get_cache()
    previous = cache.get(FAST_PREVIOUS_KEY)
    cache.set(FAST_PREVIOUS_KEY, {"at": now.timestamp(), "totals": totals}, FAST_PREVIOUS_TTL)
    seconds = now.timestamp() - previous["at"] if previous else None
    if seconds is not None and seconds <= 0:
        previous, seconds = None, None
    derived = figures.derive(previous["totals"] if previous else None, totals, seconds)
    peers = totals.get("peers")
    return FastReading(
        at=now,
        connections=int(derived["connections"]),
        # Without a previous reading the histogram holds every delivery since the files
        # were made: no p95 of "now".
        latency_p95_s=derived["latency"]["p95"] if previous else None,
        latency_samples=int(derived["latency_samples"]) if previous else 0,
        window_s=seconds,
        cpu=derived["server_cpu"],
        outbox_depth=int(derived["outbox_depth"]),
        partial=isinstance(peers, dict) and peers.get("partial") is True,
    )
