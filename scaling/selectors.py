"""Reads of wedding-day operations: the current wedding-day mode (through the cache), the
demand model's inputs (the wedding calendar and the metric history), and what the
scaling evaluation starts from (current metrics, current capacity, weddings in window)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import defaultdict
from dataclasses import replace
from typing import Any

from django.conf import settings

from core.switches import Switch
from scaling import readings
from scaling.decisions import Capacity, CurrentMetrics, Decision, Reservation, ScalingPolicy
from scaling.demand import (
    DEFAULT_WINDOW_AFTER,
    HORIZON,
    UTC,
    Observation,
    WeddingPlan,
    relevant,
)
from scaling.emergency import EmergencyThresholds
from scaling.models import CapacityReservation, ScalingDecision, WeddingDayModeChange
from weddings.models import Booking, TimelineItem, Wedding

# Wedding-day mode: an audited switch, registered in ScalingConfig.ready so that realtime's
# connection limits read it by name (core.switches) without importing scaling.
WEDDING_DAY_MODE = Switch("wedding_day_mode", WeddingDayModeChange)
CACHE_KEY = WEDDING_DAY_MODE.name


def wedding_day_mode_load() -> dict[str, Any]:
    """The current mode from the database: the latest change, or off when there is none."""
    return WEDDING_DAY_MODE.load()


def wedding_day_mode() -> dict[str, Any]:
    """``{"enabled", "reason", "changed_by", "changed_at"}``: read on hot paths, so cached."""
    return WEDDING_DAY_MODE.state()


def wedding_day_mode_invalidate() -> None:
    """Drop the cached mode now and once more after the current commit."""
    WEDDING_DAY_MODE.invalidate()


def demand_inputs(
    *,
    now: dt.datetime,
    history: dt.timedelta = dt.timedelta(days=28),
    horizon: dt.timedelta = HORIZON,
) -> tuple[list[WeddingPlan], list[Observation]]:
    """The weddings touching [now − history, now + horizon] and the metric history since
    now − history, read from the database; called once per scaling evaluation."""
    start, end = now - history, now + horizon
    # A local date spans UTC-12..UTC+14 and the profile reaches 10 h past the ceremony:
    # two days of slack either side find every wedding that could matter.
    slack = dt.timedelta(days=2)
    weddings = list(
        Wedding.objects.exclude(status=Wedding.Status.CANCELLED)
        .filter(date__gte=(start - slack).date(), date__lte=(end + slack).date())
        .only("id", "date", "ceremony_time", "time_zone")
        .order_by("id")
    )
    ids = [w.pk for w in weddings]
    vendors: dict[int, int] = defaultdict(int)
    for wedding_id in Booking.objects.filter(wedding_id__in=ids, active=True).values_list(
        "wedding_id", flat=True
    ):
        vendors[wedding_id] += 1
    timeline_end: dict[int, dt.datetime] = {}
    items = TimelineItem.objects.filter(wedding_id__in=ids).exclude(
        status=TimelineItem.Status.CANCELLED
    )
    for wedding_id, starts_at, ends_at in items.values_list("wedding_id", "starts_at", "ends_at"):
        last = ends_at or starts_at
        if wedding_id not in timeline_end or last > timeline_end[wedding_id]:
            timeline_end[wedding_id] = last
    plans = []
    for w in weddings:
        local = dt.datetime.combine(w.date, w.ceremony_time, tzinfo=zoneinfo.ZoneInfo(w.time_zone))
        ceremony = local.astimezone(UTC)
        window_end = max(timeline_end.get(w.pk, ceremony + DEFAULT_WINDOW_AFTER), ceremony)
        plans.append(WeddingPlan(ceremony, vendors[w.pk], window_end.astimezone(UTC), w.pk))
    plans = relevant(plans, start, end)
    return plans, readings.history(start, now)


# A snapshot older than this is not "current": beat or the workers stopped, and the
# evaluation must not keep scaling on a reading from an hour ago.
METRICS_MAX_AGE = dt.timedelta(minutes=5)


def current_metrics(*, now: dt.datetime) -> tuple[CurrentMetrics, dt.datetime | None]:
    """The latest reading within ``METRICS_MAX_AGE`` of ``now`` (scaling.readings) as the
    decision's readings, and when it was taken; zeros and None when there is none."""
    found = readings.latest(now=now, max_age=METRICS_MAX_AGE)
    if found is None:
        return CurrentMetrics(connections=0), None
    return found


def recent_decisions(limit: int = 5) -> list[ScalingDecision]:
    """The newest scaling decisions, newest first (the dashboard's panel)."""
    return list(ScalingDecision.objects.order_by("-made_at", "-id")[:limit])


def failures_in_a_row() -> int:
    """Applied-or-failed decisions, newest first, that failed before one that did not."""
    count = 0
    for status in (
        ScalingDecision.objects.exclude(actuator_status=ScalingDecision.Status.SKIPPED)
        .order_by("-made_at", "-id")
        .values_list("actuator_status", flat=True)[:20]
    ):
        if status != ScalingDecision.Status.FAILED:
            break
        count += 1
    return count


def latest_decision() -> ScalingDecision | None:
    """The newest scaling decision, whatever its actuator made of it."""
    return ScalingDecision.objects.order_by("-made_at", "-id").first()


def _applied_decisions():
    return ScalingDecision.objects.filter(
        actuator_status__in=(ScalingDecision.Status.APPLIED, ScalingDecision.Status.SKIPPED)
    ).order_by("-made_at", "-id")


def capacity_known() -> bool:
    """Whether any decision was applied; until then the capacity is the policy's
    minimums by assumption, and the next decision is stored and applied as the baseline."""
    return _applied_decisions().exists()


def current_capacity(*, policy: ScalingPolicy) -> Capacity:
    """What runs now: the newest decision the actuator applied (or that needed nothing),
    with the time of the last applied change; the policy's minimums when there is none.
    A failed apply does not count, so the next evaluation decides (and tries) again."""
    done = _applied_decisions()
    last = done.first()
    if last is None:
        return Capacity(
            asgi_processes=policy.min_asgi,
            celery_workers=policy.min_workers,
            connection_limit=policy.min_asgi * policy.connection_limit_per_process,
        )
    change = done.exclude(action=ScalingDecision.Action.HOLD).first()
    return Capacity(
        asgi_processes=last.asgi_processes,
        celery_workers=last.celery_workers,
        connection_limit=last.connection_limit,
        last_change_at=change.made_at if change else None,
    )


def notice_posted(*, peak_at: dt.datetime, now: dt.datetime, lead: dt.timedelta) -> bool:
    """Whether a 24-hour notice was already posted for this peak: one within 2 h of it,
    in the last ``lead`` (a peak moves by a slot or two as bookings change)."""
    near = dt.timedelta(hours=2)
    return ScalingDecision.objects.filter(
        notice_peak_at__gte=peak_at - near,
        notice_peak_at__lte=peak_at + near,
        made_at__gte=now - lead,
    ).exists()


def weddings_in_window(
    *, now: dt.datetime, hours: float = 0.0, lead: dt.timedelta = dt.timedelta(hours=2)
) -> list[WeddingPlan]:
    """The weddings in their window (``lead`` before the ceremony to the end of the
    timeline) now or at any time in the next ``hours``, soonest first; read by the
    deploy guard and the wedding-day mode automation."""
    ahead = dt.timedelta(hours=hours)
    plans, _ = demand_inputs(now=now, history=dt.timedelta(0), horizon=ahead + lead)
    found = [p for p in plans if p.ceremony_utc - lead <= now + ahead and p.window_end_utc >= now]
    return sorted(found, key=lambda p: (p.ceremony_utc, p.wedding_id or 0))


def scaling_policy() -> ScalingPolicy:
    """The decision rules' policy: the defaults of ``ScalingPolicy`` with the deployment's
    settings (SCALING_*) over them. The hard per-process limit keeps its ratio to the
    comfortable capacity."""
    per_process = settings.SCALING_CONNECTIONS_PER_PROCESS
    defaults = ScalingPolicy()
    ratio = defaults.connection_limit_per_process / defaults.connections_per_process
    return replace(
        defaults,
        connections_per_process=per_process,
        connection_limit_per_process=round(per_process * ratio),
        headroom=settings.SCALING_HEADROOM,
        min_asgi=settings.SCALING_MIN_ASGI,
        max_asgi=settings.SCALING_MAX_ASGI,
        min_workers=settings.SCALING_MIN_WORKERS,
        max_workers=settings.SCALING_MAX_WORKERS,
        prescale_lead=dt.timedelta(hours=settings.SCALING_PRESCALE_HOURS),
    )


def reservation_lead(policy: ScalingPolicy) -> dt.timedelta:
    """How long before its peak a capacity reservation starts: ``SCALING_RESERVATION_LEAD``
    hours (by default ``SCALING_PRESCALE_HOURS``), at most the policy's ``notice_lead``."""
    return min(policy.notice_lead, dt.timedelta(hours=settings.SCALING_RESERVATION_LEAD))


def emergency_thresholds() -> EmergencyThresholds:
    """The emergency rule's limits: ``EmergencyThresholds`` with the deployment's settings
    (SCALING_FAST_*) over them."""
    return replace(
        EmergencyThresholds(),
        utilisation=settings.SCALING_FAST_UTILISATION,
        latency_p95_s=settings.SCALING_FAST_LATENCY_P95,
        cpu=settings.SCALING_FAST_CPU,
        outbox_per_process=settings.SCALING_FAST_OUTBOX_DEPTH,
    )


def last_emergency(*, since: dt.datetime) -> ScalingDecision | None:
    """The newest emergency decision made since ``since``, whatever its actuator made of
    it (a pending or failed one counts: the check must not hammer a slow or broken
    actuator every few seconds; the minute evaluation retries a failed apply)."""
    return (
        ScalingDecision.objects.filter(made_at__gte=since, inputs__has_key="emergency")
        .order_by("-made_at", "-id")
        .first()
    )


# How much of an actuator's output the ops event carries (the row keeps more).
EVENT_OUTPUT_CHARS = 500


def decision_payload(row: ScalingDecision, decision: Decision | None = None) -> dict[str, Any]:
    """The ``scaling.decided`` event's payload: the stored row, and the notice it posted."""
    notice = decision.notice if decision is not None and row.notice_peak_at else None
    return {
        "id": row.pk,
        "made_at": row.made_at,
        "action": row.action,
        "asgi": row.asgi_processes,
        "workers": row.celery_workers,
        "connection_limit": row.connection_limit,
        "previous": {
            "asgi": row.previous_asgi_processes,
            "workers": row.previous_celery_workers,
            "connection_limit": row.previous_connection_limit,
        },
        "reason": row.reason,
        "actuator": row.actuator,
        "status": row.actuator_status,
        "output": row.actuator_output[:EVENT_OUTPUT_CHARS],
        "notice": (
            {
                "peak_at": notice.peak_at,
                "connections": round(notice.connections),
                "asgi": notice.asgi_processes,
            }
            if notice
            else None
        ),
    }


# --- capacity reservations (ADR 0033) ------------------------------------------------------

# The dashboard's and the API's lists stay short whatever the calendar holds.
RESERVATIONS_SHOWN = 10


def open_reservations() -> list[CapacityReservation]:
    """The planned and active reservations, soonest first (the evaluation's sync)."""
    return list(CapacityReservation.objects.filter(status__in=CapacityReservation.OPEN))


def reservation_input(row: CapacityReservation) -> Reservation:
    """A stored reservation as ``decide()``'s input."""
    return Reservation(
        id=row.pk,
        peak_at=row.peak_at,
        asgi=row.asgi_processes,
        workers=row.celery_workers,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
    )


def active_reservations() -> tuple[Reservation, ...]:
    """The reservations in force (status active), as ``decide()``'s input."""
    rows = CapacityReservation.objects.filter(status=CapacityReservation.Status.ACTIVE)
    return tuple(reservation_input(r) for r in rows)


def upcoming_reservations(*, limit: int = RESERVATIONS_SHOWN) -> list[CapacityReservation]:
    """The planned and active reservations, soonest first: the dashboard's panel and the
    ``reserved`` list of ``GET /api/scaling/desired``."""
    return open_reservations()[:limit]


def reserved_minimums(*, policy: ScalingPolicy) -> tuple[int, int]:
    """The minimums in force: the policy's, raised by the active reservations (bounded
    by the policy's maximums); what the actuator is told with each apply."""
    rows = CapacityReservation.objects.filter(status=CapacityReservation.Status.ACTIVE)
    asgi = max([policy.min_asgi, *(r.asgi_processes for r in rows)])
    workers = max([policy.min_workers, *(r.celery_workers for r in rows)])
    return min(asgi, policy.max_asgi), min(workers, policy.max_workers)


def reservation_payload(row: CapacityReservation, change: str | None = None) -> dict[str, Any]:
    """A reservation as the ``scaling.reserved`` event's payload (with ``change``: what
    just happened to it), the dashboard's row and the API's list item."""
    body = {
        "id": row.pk,
        "status": row.status,
        "peak_at": row.peak_at,
        "connections": round(row.connections),
        "asgi": row.asgi_processes,
        "workers": row.celery_workers,
        "starts_at": row.starts_at,
        "ends_at": row.ends_at,
        "made_at": row.made_at,
        "updated_at": row.updated_at,
        "forecast_made_at": row.forecast_made_at,
        "weddings": len(row.weddings),
        "reason": row.reason,
    }
    if change is not None:
        body["change"] = change
    return body
