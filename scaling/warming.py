"""Calendar-driven cache warming: fill the cache for weddings whose ceremony is near.

Called every 15 minutes by beat (``scaling.tasks.warm_cache``) and by staff with
``python manage.py warm_cache``. It only reads through the cached loaders
(``snapshot_get``, ``wedding_guests``, ``user_access``, ``user_coordinator_of``), so a
second run finds every entry already there: warming is idempotent and never writes to
the database. These are what a snapshot read of the day needs (``GET /api/weddings/<id>/``:
the reader's access, the snapshot, the guests, and for a vendor the suppliers they
coordinate). Supplier profiles (``weddings.caching.supplier_profile``) are not warmed:
nothing on the day reads them (the snapshot carries its booked suppliers itself).
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils import timezone

from realtime.limits import category_rank
from realtime.snapshots import snapshot_get, snapshot_key
from weddings.caching import (
    access_key,
    coordinator_key,
    guests_key,
    user_access,
    user_coordinator_of,
    wedding_guests,
)
from weddings.models import Booking, SupplierMembership, Wedding

logger = logging.getLogger(__name__)

# A ceremony that started up to an hour ago is still the busiest moment of its day.
WARM_LOOKBACK = dt.timedelta(hours=1)
# A calendar date spans at most 26 h of UTC (UTC-12 .. UTC+14): a day either side of the
# window's UTC dates finds every wedding whose local ceremony could fall inside it.
_DATE_SLACK = dt.timedelta(days=1)


@dataclass(frozen=True)
class WarmPlan:
    """What one warming run fills, in a stable order: each wedding's snapshot and guests,
    each user's access (vendors and couples), each vendor's coordinator entry."""

    weddings: list[int] = field(default_factory=list)
    users: list[int] = field(default_factory=list)
    vendors: list[int] = field(default_factory=list)  # the users of the booked suppliers

    def keys(self) -> list[str]:
        """The cache keys the loaders use for these ids."""
        return (
            [snapshot_key(pk) for pk in self.weddings]
            + [guests_key(pk) for pk in self.weddings]
            + [access_key(pk) for pk in self.users]
            + [coordinator_key(pk) for pk in self.vendors]
        )


def ceremony_at(wedding: Wedding) -> dt.datetime:
    """The wedding's ceremony as an aware datetime in its own time zone."""
    zone = zoneinfo.ZoneInfo(wedding.time_zone)
    return dt.datetime.combine(wedding.date, wedding.ceremony_time, tzinfo=zone)


def warm_plan(*, now: dt.datetime, horizon_hours: float) -> WarmPlan:
    """Not-cancelled weddings with a ceremony in [now - 1 h, now + horizon], and who works them."""
    start, end = now - WARM_LOOKBACK, now + dt.timedelta(hours=horizon_hours)
    candidates = (
        Wedding.objects.exclude(status=Wedding.Status.CANCELLED)
        .filter(date__gte=start.date() - _DATE_SLACK, date__lte=end.date() + _DATE_SLACK)
        .only("id", "date", "ceremony_time", "time_zone")
        .order_by("id")
    )
    weddings = [w.pk for w in candidates if start <= ceremony_at(w) <= end]
    suppliers = sorted(
        set(
            Booking.objects.filter(wedding_id__in=weddings, active=True).values_list(
                "supplier_id", flat=True
            )
        )
    )
    # Each vendor's best supplier category (REALTIME_CATEGORY_PRIORITY, ADR 0031): the
    # day's priority vendors are warmed first, the couples after every vendor.
    others = category_rank(set())
    ranks: dict[int, int] = {}
    for user_id, category in SupplierMembership.objects.filter(
        supplier_id__in=suppliers
    ).values_list("user_id", "supplier__category"):
        rank = category_rank({category}) if settings.REALTIME_PRIORITY else 0
        ranks[user_id] = min(ranks.get(user_id, others), rank)
    vendors = set(ranks)
    users = vendors | set(
        Wedding.couple.through.objects.filter(wedding_id__in=weddings).values_list(
            "user_id", flat=True
        )
    )

    def by_category(ids: set[int]) -> list[int]:
        return sorted(ids, key=lambda pk: (ranks.get(pk, others + 1), pk))

    return WarmPlan(weddings=weddings, users=by_category(users), vendors=by_category(vendors))


def cache_warm(
    *,
    now: dt.datetime | None = None,
    horizon_hours: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Warm snapshots, guests, access and coordinator entries for the weddings about to start.

    ``progress(done, total)`` is called about every tenth of the entries and at the end.
    Returns the counts and the keys it warmed.
    """
    now = now or timezone.now()
    if horizon_hours is None:
        horizon_hours = settings.CACHE_WARM_HORIZON_HOURS
    plan = warm_plan(now=now, horizon_hours=horizon_hours)
    total = len(plan.keys())
    every = max(1, total // 10)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None and (done == total or done % every == 0):
            progress(done, total)

    for loader, ids in (
        (snapshot_get, plan.weddings),
        (wedding_guests, plan.weddings),
        (user_access, plan.users),
        (user_coordinator_of, plan.vendors),
    ):
        for pk in ids:
            loader(pk)
            step()
    result = {
        "weddings": len(plan.weddings),
        "snapshots": len(plan.weddings),
        "guest_lists": len(plan.weddings),
        "users": len(plan.users),
        "vendors": len(plan.vendors),
        "keys": plan.keys(),
    }
    logger.info(
        "cache_warm: %d wedding(s) with a ceremony in [%s, +%s h]: %d snapshot(s), "
        "%d guest list(s), %d access and %d coordinator entr(ies)",
        result["weddings"],
        (now - WARM_LOOKBACK).isoformat(timespec="minutes"),
        horizon_hours,
        result["snapshots"],
        result["guest_lists"],
        result["users"],
        result["vendors"],
    )
    return result
