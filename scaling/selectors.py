"""Reads of wedding-day operations: the current wedding-day mode (through the cache), and
the demand model's inputs (the wedding calendar and the metric history)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import defaultdict
from typing import Any

from django.db import transaction

from monitoring.models import MetricSnapshot
from scaling.demand import (
    DEFAULT_WINDOW_AFTER,
    HORIZON,
    UTC,
    Observation,
    WeddingPlan,
    relevant,
)
from scaling.models import WeddingDayModeChange
from wedsync.cache import get_cache
from wedsync.models import Booking, TimelineItem, Wedding
from wedsync.selectors import switch_state

CACHE_KEY = "wedding_day_mode"


def wedding_day_mode_load() -> dict[str, Any]:
    """The current mode from the database: the latest change, or off when there is none."""
    return switch_state(
        WeddingDayModeChange.objects.select_related("changed_by")
        .order_by("-changed_at", "-id")
        .first()
    )


def wedding_day_mode() -> dict[str, Any]:
    """``{"enabled", "reason", "changed_by", "changed_at"}``: read on hot paths, so cached."""
    return get_cache().get_or_load(CACHE_KEY, wedding_day_mode_load)


def wedding_day_mode_invalidate() -> None:
    """Drop the cached mode now and once more after the current commit."""
    cache = get_cache()
    cache.delete(CACHE_KEY)
    transaction.on_commit(lambda: cache.delete(CACHE_KEY))


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
    observations = [
        Observation(at, connections, deliveries)
        for at, connections, deliveries in MetricSnapshot.objects.filter(
            taken_at__gte=start, taken_at__lte=now
        )
        .order_by("taken_at")
        .values_list("taken_at", "connections", "deliveries_per_s")
    ]
    return plans, observations
