"""Who is pushed an event: the members of its wedding who may read it (the role matrix),
narrowed to those it concerns, less whoever made it, less those whose quiet rule holds it.

Pushed (``wants_push``): emergencies, every ``ack_required`` event (a timeline shift is
one), and the overdue-ack nudge ``alert.ack_overdue`` (the "you are late" of the
catalogue). Only the events of a wedding topic are pushed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone

from realtime.models import Event
from weddings import roles
from weddings import selectors as domain
from weddings.models import Booking, SupplierMembership, Wedding

from .models import Subscription

# Events pushed whatever their ack flag; any other ack_required event is pushed too.
PUSHED_EVENTS = frozenset({"emergency.raised", "timeline.shifted", "alert.ack_overdue"})
NOT_LIVE = (Wedding.Status.COMPLETED, Wedding.Status.CANCELLED)


def wedding_id_of(topic: str) -> int | None:
    """The wedding of a ``wedding:<id>`` topic; None for any other topic."""
    kind, _, rest = topic.partition(":")
    return int(rest) if kind == "wedding" and rest.isdigit() else None


def wants_push(event: Event) -> bool:
    """Whether a stored event is pushed to anyone (a cheap test, no query)."""
    return wedding_id_of(event.topic) is not None and (
        event.event in PUSHED_EVENTS or event.ack_required
    )


def concerned_supplier_ids(event: Event) -> set[int] | None:
    """The suppliers an event is for (their users are pushed); None: every member.

    A timeline shift is for the suppliers with a moved item (the catalogue's
    ``ack_suppliers``); an overdue-ack nudge for the suppliers who have not acknowledged
    and the planners told of it."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    if event.event == "timeline.shifted":
        return {int(i) for i in payload.get("ack_suppliers", []) if isinstance(i, int)}
    if event.event == "alert.ack_overdue":
        missing = {m.get("id") for m in payload.get("missing", []) if isinstance(m, dict)}
        planners = set(payload.get("planner_supplier_ids", []))
        return {int(i) for i in missing | planners if isinstance(i, int)}
    return None


def is_live(wedding: Wedding, now: dt.datetime) -> bool:
    """Whether a wedding is live: in progress, or its day at its venue and not over."""
    if wedding.status == Wedding.Status.IN_PROGRESS:
        return True
    if wedding.status in NOT_LIVE:
        return False
    return now.astimezone(ZoneInfo(wedding.time_zone)).date() == wedding.date


def users_on_a_live_wedding(user_ids: set[int], now: dt.datetime) -> set[int]:
    """Those of ``user_ids`` working on (or marrying at) a wedding that is live now."""
    near = Q(date__range=(now.date() - dt.timedelta(days=1), now.date() + dt.timedelta(days=1)))
    theirs = Q(
        pk__in=Booking.objects.filter(
            active=True, supplier__memberships__user_id__in=user_ids
        ).values("wedding_id")
    ) | Q(pk__in=Wedding.couple.through.objects.filter(user_id__in=user_ids).values("wedding_id"))
    candidates = Wedding.objects.filter(theirs).filter(near | Q(status=Wedding.Status.IN_PROGRESS))
    weddings = [w.pk for w in candidates.exclude(status__in=NOT_LIVE) if is_live(w, now)]
    if not weddings:
        return set()
    working = SupplierMembership.objects.filter(
        user_id__in=user_ids,
        supplier__bookings__wedding_id__in=weddings,
        supplier__bookings__active=True,
    ).values_list("user_id", flat=True)
    marrying = Wedding.couple.through.objects.filter(
        user_id__in=user_ids, wedding_id__in=weddings
    ).values_list("user_id", flat=True)
    return set(working) | set(marrying)


def may_read(user: Any, wedding_id: int, event: Event) -> bool:
    """Whether the role matrix lets ``user`` read ``event`` of the wedding (the same rows
    as the live feed: ``read.coordination`` for coordination events, else ``read.plan``)."""
    access = domain.user_wedding_access(user, wedding_id)
    if not access.visible:
        return False
    action = "read.coordination" if event.event in roles.COORDINATION_EVENTS else "read.plan"
    return roles.may(
        action,
        staff=bool(user.is_staff),
        acting=bool(access.acting_supplier_ids),
        editor=lambda: domain.user_can_edit_timeline(user, wedding_id),
    )


@dataclass(frozen=True)
class Recipient:
    user: Any
    subscription_ids: list[int]


def recipients(event: Event, *, now: dt.datetime | None = None) -> list[Recipient]:
    """The users to push ``event`` to, with their subscriptions (see the module doc)."""
    wedding_id = wedding_id_of(event.topic)
    if wedding_id is None:
        return []
    now = now or timezone.now()
    suppliers = concerned_supplier_ids(event)
    booked = Booking.objects.filter(wedding_id=wedding_id, active=True)
    if suppliers is not None:
        booked = booked.filter(supplier_id__in=suppliers)
    members = SupplierMembership.objects.filter(
        supplier_id__in=booked.values("supplier_id")
    ).values("user_id")
    who = Q(user_id__in=members)
    if suppliers is None:
        couple = Wedding.couple.through.objects.filter(wedding_id=wedding_id).values("user_id")
        who |= Q(user_id__in=couple)
    rows = Subscription.objects.filter(who, user__is_active=True).values_list("user_id", "pk")
    if event.actor_user_id is not None:
        rows = rows.exclude(user_id=event.actor_user_id)
    by_user: dict[int, list[int]] = {}
    for user_id, pk in rows:
        by_user.setdefault(user_id, []).append(pk)
    if not by_user:
        return []
    if event.priority != Event.Priority.CRITICAL:
        # The quiet rule: on a live wedding a member hears only what is critical.
        for user_id in users_on_a_live_wedding(set(by_user), now):
            del by_user[user_id]
    users = get_user_model().objects.filter(pk__in=by_user).order_by("pk")
    return [
        Recipient(user, sorted(by_user[user.pk]))
        for user in users
        if may_read(user, wedding_id, event)
    ]
