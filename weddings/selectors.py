"""Reads of the wedding domain: who may see and edit a wedding, its timeline, its guests.

The visibility rule (PROTOCOL §3): staff see every wedding; anyone else sees the
weddings they are in the couple of, and those where a supplier they work for has an
active booking. Inactive and anonymous users see nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Q, QuerySet

from core.wire import wire_time
from weddings import roles
from weddings.models import (
    MAX_GUESTS_PER_WEDDING,
    Booking,
    Guest,
    Supplier,
    SupplierMembership,
    TimelineItem,
    Wedding,
)


def is_active_user(user: Any) -> bool:
    """A signed-in, active user (anonymous, None and deactivated users are not)."""
    return bool(user is not None and user.is_authenticated and user.is_active)


def weddings_visible_to(user: Any) -> QuerySet[Wedding]:
    """The weddings a user may see, each once: for listings and topic checks."""
    if not is_active_user(user):
        return Wedding.objects.none()
    if user.is_staff:
        return Wedding.objects.all()
    # Subqueries rather than joins: no duplicate rows, so no DISTINCT is needed and the
    # queryset stays free to be ordered, sliced and filtered further.
    as_couple = Wedding.couple.through.objects.filter(user_id=user.pk).values("wedding_id")
    as_supplier = Booking.objects.filter(
        active=True, supplier__memberships__user_id=user.pk
    ).values("wedding_id")
    return Wedding.objects.filter(Q(pk__in=as_couple) | Q(pk__in=as_supplier))


def user_can_view_wedding(user: Any, wedding_id: int) -> bool:
    """Whether a user may see a wedding; False alike for one that does not exist."""
    return weddings_visible_to(user).filter(pk=wedding_id).exists()


def user_supplier_ids(user: Any) -> set[int]:
    """The ids of the suppliers a user works for (empty for inactive or anonymous users)."""
    if not is_active_user(user):
        return set()
    return set(
        SupplierMembership.objects.filter(user_id=user.pk).values_list("supplier_id", flat=True)
    )


def user_acting_supplier_ids(user: Any, wedding_id: int) -> set[int]:
    """The user's suppliers with an active booking on a wedding (one query)."""
    if not is_active_user(user):
        return set()
    return set(
        SupplierMembership.objects.filter(
            user_id=user.pk,
            supplier__bookings__wedding_id=wedding_id,
            supplier__bookings__active=True,
        ).values_list("supplier_id", flat=True)
    )


@dataclass(frozen=True)
class WeddingAccess:
    """What one user is to one wedding: whether they may see it, and as which suppliers."""

    visible: bool
    acting_supplier_ids: frozenset[int]


_NO_ACCESS = WeddingAccess(False, frozenset())


def user_wedding_access(user: Any, wedding_id: int) -> WeddingAccess:
    """``user_can_view_wedding`` and ``user_acting_supplier_ids`` in one round trip.

    Every publish needs both, exactly (never from the cache), so this is on the hot path:
    one hand-written statement instead of two ORM queries, about 1 ms of Python and a
    round trip less per publish (docs/benchmarks.md). Staff see every existing wedding.
    """
    if not is_active_user(user):
        return _NO_ACCESS
    membership = SupplierMembership._meta.db_table
    booking = Booking._meta.db_table
    couple = Wedding.couple.through._meta.db_table
    # Supplier ids are positive: 0 marks the couple row, -1 the wedding's existence.
    sql = (
        f"SELECT m.supplier_id FROM {membership} m"  # noqa: S608 -- table names from _meta
        f" INNER JOIN {booking} b ON b.supplier_id = m.supplier_id"
        " WHERE m.user_id = %s AND b.wedding_id = %s AND b.active"
        f" UNION ALL SELECT 0 FROM {couple} c WHERE c.user_id = %s AND c.wedding_id = %s"
    )
    params: list[Any] = [user.pk, wedding_id, user.pk, wedding_id]
    if user.is_staff:
        sql += f" UNION ALL SELECT -1 FROM {Wedding._meta.db_table} w WHERE w.id = %s"  # noqa: S608
        params.append(wedding_id)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = {row[0] for row in cursor.fetchall()}
    acting = frozenset(i for i in ids if i > 0)
    visible = bool(acting) or 0 in ids or -1 in ids
    return WeddingAccess(visible, acting)


def user_can_edit_timeline(user: Any, wedding_id: int) -> bool:
    """Whether a user may change a wedding's timeline: staff, planners and coordinators.

    A vendor qualifies through a supplier with an active booking on the wedding when
    that supplier is a planner or the user's own membership of it has the coordinator
    role. False for a wedding that does not exist.
    """
    if not is_active_user(user):
        return False
    if user.is_staff:
        return Wedding.objects.filter(pk=wedding_id).exists()
    # One filter() call: the booking conditions apply to the same booking row.
    return (
        SupplierMembership.objects.filter(
            user_id=user.pk,
            supplier__bookings__wedding_id=wedding_id,
            supplier__bookings__active=True,
        )
        .filter(
            Q(supplier__category=Supplier.Category.PLANNER)
            | Q(role=SupplierMembership.Role.COORDINATOR)
        )
        .exists()
    )


def timeline_for_wedding(wedding_id: int) -> list[TimelineItem]:
    """A wedding's timeline in running order, with each item's supplier ids loaded
    (``load_supplier_ids``; two queries)."""
    items = list(TimelineItem.objects.filter(wedding_id=wedding_id).order_by("starts_at", "id"))
    load_supplier_ids(items)
    return items


def load_supplier_ids(items: list[TimelineItem]) -> None:
    """Load the items' supplier ids (``loaded_supplier_ids``, what ``timeline_item_as_dict``
    reads) in one query of the link table. A prefetch of ``suppliers`` built a model with
    parsed timestamps per link: 13 items x 13 suppliers cost ~20 ms of Python in a shift,
    holding the GIL the event loop needs, for the same ids; every snapshot rebuilt after
    a timeline change paid it too."""
    ids: dict[int, list[int]] = {item.pk: [] for item in items}
    if not ids:
        return
    links = TimelineItem.suppliers.through.objects.filter(timelineitem_id__in=list(ids))
    for item_id, supplier_id in links.values_list("timelineitem_id", "supplier_id"):
        ids[item_id].append(supplier_id)
    for item in items:
        item.loaded_supplier_ids = sorted(ids[item.pk])


def active_supplier_ids(wedding_id: int) -> set[int]:
    """The ids of the suppliers with an active booking on a wedding."""
    return set(
        Booking.objects.filter(wedding_id=wedding_id, active=True).values_list(
            "supplier_id", flat=True
        )
    )


def _utc_iso(value: dt.datetime | None) -> str | None:
    return None if value is None else wire_time(value)


def timeline_item_as_dict(item: TimelineItem) -> dict[str, Any]:
    """The PROTOCOL §5 item payload; no query when ``suppliers`` is prefetched or its
    ``loaded_supplier_ids`` are loaded (``load_supplier_ids``)."""
    supplier_ids = getattr(item, "loaded_supplier_ids", None)
    if supplier_ids is None:
        supplier_ids = sorted(supplier.pk for supplier in item.suppliers.all())
    return {
        "id": item.pk,
        "title": item.title,
        "starts_at": _utc_iso(item.starts_at),
        "ends_at": _utc_iso(item.ends_at),
        "location": item.location,
        "supplier_ids": supplier_ids,
        "status": item.status,
        "key_moment": item.key_moment,
        "pinned": item.pinned,
        "version": item.version,
    }


# --- guests (ADR 0026) ------------------------------------------------------------------


def guests_load(wedding_id: int) -> list[dict[str, Any]]:
    """A wedding's guests as plain rows, by name (one query; at most
    ``MAX_GUESTS_PER_WEDDING``): what ``weddings.caching.wedding_guests`` caches."""
    return list(
        Guest.objects.filter(wedding_id=wedding_id)
        .order_by("name", "id")
        .values("id", "name", "rsvp", "diet", "dietary_note", "table")[:MAX_GUESTS_PER_WEDDING]
    )


def _table_order(name: str) -> tuple[int, int, str]:
    """Tables in the order a room plan numbers them: 2 before 10, names after numbers, the
    unseated ("") last."""
    if not name:
        return (2, 0, "")
    return (0, int(name), name) if name.isdigit() else (1, 0, name.casefold())


def guests_visible(role: roles.Role | None, categories: Iterable[str] = ()) -> bool:
    """Whether ``guest_view`` shows anything to this reader (any ``guests.*`` row)."""
    return any(
        roles.allows(action, role, categories)
        for action in ("guests.list", "guests.seating", "guests.catering")
    )


def guest_view(
    guests: list[dict[str, Any]], *, role: roles.Role | None, categories: Iterable[str] = ()
) -> dict[str, Any] | None:
    """What a reader of a wedding sees of its guests (``guests_load`` rows), by the role
    matrix's ``guests.*`` rows; None: nothing at all (the key is left out of the snapshot).

    ``totals`` counts the RSVPs. Each table of ``tables`` (a guest without one is in the
    table ``""``) counts its guests who have not declined (``count``); the seating adds
    their ``names``; the catering its ``diets`` (of those guests, by diet) and
    ``dietary_notes`` (their notes, with the diet, never the name); the whole list adds
    ``guests``, every guest with every field, declined ones too.
    """
    full = roles.allows("guests.list", role, categories)
    seating = full or roles.allows("guests.seating", role, categories)
    catering = full or roles.allows("guests.catering", role, categories)
    if not (seating or catering):
        return None  # guests_visible
    totals = {choice: 0 for choice in Guest.Rsvp.values}
    tables: dict[str, dict[str, Any]] = {}
    for guest in guests:
        totals[guest["rsvp"]] += 1
        if guest["rsvp"] == Guest.Rsvp.DECLINED:
            continue
        table = tables.setdefault(guest["table"], _table(guest["table"], seating, catering))
        table["count"] += 1
        if seating:
            table["names"].append(guest["name"])
        if catering:
            table["diets"][guest["diet"]] = table["diets"].get(guest["diet"], 0) + 1
            if guest["dietary_note"]:
                table["dietary_notes"].append(
                    {"diet": guest["diet"], "note": guest["dietary_note"]}
                )
    view: dict[str, Any] = {
        "totals": totals,
        "tables": [tables[name] for name in sorted(tables, key=_table_order)],
    }
    if full:
        view["guests"] = [dict(guest) for guest in guests]
    return view


def _table(name: str, seating: bool, catering: bool) -> dict[str, Any]:
    table: dict[str, Any] = {"table": name, "count": 0}
    if seating:
        table["names"] = []
    if catering:
        table["diets"] = {}
        table["dietary_notes"] = []
    return table
