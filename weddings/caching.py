"""Cached reads of the wedding domain, and the receivers that keep them current.

* ``user_access(user_id)`` (key ``access:<id>``): what the subscribe check needs of a
  user — read on every subscribe, so cached. The subscribe check and the snapshot read
  (``GET /api/weddings/<id>/``) use it: publish and the re-check of live subscriptions
  read the database (writes must be exact).
* ``supplier_profile(supplier_id)`` (key ``supplier:<id>``): a supplier's public card.
* ``user_cached(user_id)`` (key ``user:<id>``): the user row behind a session or token,
  read on every WebSocket connect and request (``wedsync.auth_backends``, tokens).
* ``wedding_guests(wedding_id)`` (key ``guests:<id>``): a wedding's guest rows, read with
  every snapshot (``GET /api/weddings/<id>/``), each reader shown its part
  (``guest_view_for``, the role matrix's ``guests.*`` rows).
* ``user_coordinator_of(user_id)`` (key ``coordinator:<id>``): the suppliers a user is a
  coordinator of; with the access and the snapshot's booked suppliers it tells a
  planner from a vendor without a query (``guest_view_for``).

``auser_access`` and ``auser_cached`` are the async forms: a cache hit runs on the event
loop, a miss loads in a realtime database thread (``core.db.in_db_thread``).

Every write that can change a value drops it twice: at once (later reads in the same
transaction see the change) and after commit (a reader that loaded the old rows in
between cannot keep them), in every process (the cache's invalidation channel, within
``CACHE_L1_TTL`` if a message is lost). ``QuerySet.update``/``bulk_create`` send no
signals: what they change stays cached until the entry expires, and ``user:`` and
``access:`` entries (and realtime's ``token_version:``) expire after
``CACHE_ACCESS_TTL`` seconds (default 300), not the 30 minutes of other entries
(``CACHE_L2_TTL``). Call ``access_invalidate``/``user_invalidate`` after such an update
to end it at once. Open WebSocket connections do not wait for either: the realtime
re-check (``REALTIME_ACCESS_RECHECK``, 60 s) reads the database and drops the stale
entries it finds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import serializers
from django.db import transaction
from django.db.models import Q
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from core.cache import get_cache
from core.db import in_db_thread
from weddings import roles
from weddings.models import Booking, Guest, Supplier, SupplierMembership, Wedding
from weddings.selectors import guest_view, guests_load, guests_visible


def access_ttl() -> float:
    """How long a ``user:`` or ``access:`` entry lives (``CACHE_ACCESS_TTL``, seconds): the
    bound on what a bulk update that sends no signal leaves stale for them."""
    return float(settings.CACHE_ACCESS_TTL)


def access_key(user_id: int) -> str:
    """The cache key of a user's access."""
    return f"access:{user_id}"


def supplier_key(supplier_id: int) -> str:
    """The cache key of a supplier's profile."""
    return f"supplier:{supplier_id}"


def user_access_load(user_id: int) -> dict[str, Any]:
    """A user's access from the database (three queries, one for staff or missing users).

    ``weddings``: the weddings visible as couple or through an active booking of one of
    the user's suppliers (empty for staff, who see all). A missing user is inactive.
    """
    row = (
        get_user_model()._default_manager.filter(pk=user_id).values("is_active", "is_staff").first()
    )
    if row is None:
        return {"active": False, "staff": False, "weddings": [], "suppliers": []}
    suppliers = sorted(
        SupplierMembership.objects.filter(user_id=user_id).values_list("supplier_id", flat=True)
    )
    weddings: list[int] = []
    if row["is_active"] and not row["is_staff"]:
        as_couple = Wedding.couple.through.objects.filter(user_id=user_id).values("wedding_id")
        as_supplier = Booking.objects.filter(
            active=True, supplier__memberships__user_id=user_id
        ).values("wedding_id")
        weddings = sorted(
            Wedding.objects.filter(Q(pk__in=as_couple) | Q(pk__in=as_supplier)).values_list(
                "pk", flat=True
            )
        )
    return {
        "active": row["is_active"],
        "staff": row["is_staff"],
        "weddings": weddings,
        "suppliers": suppliers,
    }


def user_access(user_id: int) -> dict[str, Any]:
    """``{"active", "staff", "weddings": [ids], "suppliers": [ids]}`` through the cache."""
    return get_cache().get_or_load(
        access_key(user_id), lambda: user_access_load(user_id), ttl=access_ttl()
    )


async def auser_access(user_id: int) -> dict[str, Any]:
    """``user_access`` for async code: a hit costs no thread, a miss loads in a realtime
    database thread (``DatabaseError`` while the database is unreachable)."""
    return await get_cache().aget_or_load(
        access_key(user_id), lambda: in_db_thread(user_access_load)(user_id), ttl=access_ttl()
    )


def user_key(user_id: int) -> str:
    """The cache key of a user row."""
    return f"user:{user_id}"


def user_row_load(user_id: Any) -> str | None:
    """The user row as Django's JSON serialisation (every field, so it can be saved)."""
    user = get_user_model()._default_manager.filter(pk=user_id).first()
    return None if user is None else serializers.serialize("json", [user])


def user_cached(user_id: Any) -> Any:
    """The user with this primary key through the cache, or None when there is none.

    The instance is complete (it may be saved, e.g. by a password change); a save or
    delete of the user drops the cached row.
    """
    try:
        user_id = int(user_id)
    except (TypeError, ValueError):
        return None
    row = get_cache().get_or_load(
        user_key(user_id), lambda: user_row_load(user_id), ttl=access_ttl()
    )
    return _user_from_row(row)


async def auser_cached(user_id: Any) -> Any:
    """``user_cached`` for async code: a hit costs no thread, a miss loads in a realtime
    database thread."""
    try:
        user_id = int(user_id)
    except (TypeError, ValueError):
        return None
    row = await get_cache().aget_or_load(
        user_key(user_id), lambda: in_db_thread(user_row_load)(user_id), ttl=access_ttl()
    )
    return _user_from_row(row)


def _user_from_row(row: str | None) -> Any:
    if row is None:
        return None
    return next(serializers.deserialize("json", row)).object


def supplier_profile_load(supplier_id: int) -> dict[str, Any] | None:
    """A supplier's profile from the database; None when it does not exist."""
    return (
        Supplier.objects.filter(pk=supplier_id)
        .values("id", "name", "category", "email", "phone")
        .first()
    )


def supplier_profile(supplier_id: int) -> dict[str, Any] | None:
    """``{"id", "name", "category", "email", "phone"}`` through the cache."""
    return get_cache().get_or_load(
        supplier_key(supplier_id), lambda: supplier_profile_load(supplier_id)
    )


def guests_key(wedding_id: int) -> str:
    """The cache key of a wedding's guest rows."""
    return f"guests:{wedding_id}"


def wedding_guests(wedding_id: int) -> list[dict[str, Any]]:
    """``weddings.selectors.guests_load`` through the cache (warmed before the day)."""
    return get_cache().get_or_load(guests_key(wedding_id), lambda: guests_load(wedding_id))


async def awedding_guests(wedding_id: int) -> list[dict[str, Any]]:
    """``wedding_guests`` for async code: a hit costs no thread."""
    return await get_cache().aget_or_load(
        guests_key(wedding_id), lambda: in_db_thread(guests_load)(wedding_id)
    )


def coordinator_key(user_id: int) -> str:
    """The cache key of the suppliers a user coordinates."""
    return f"coordinator:{user_id}"


def user_coordinator_of_load(user_id: int) -> list[int]:
    """The ids of the suppliers whose membership gives the user the coordinator role."""
    return sorted(
        SupplierMembership.objects.filter(
            user_id=user_id, role=SupplierMembership.Role.COORDINATOR
        ).values_list("supplier_id", flat=True)
    )


def user_coordinator_of(user_id: int) -> list[int]:
    """``user_coordinator_of_load`` through the cache (an access entry's lifetime)."""
    return get_cache().get_or_load(
        coordinator_key(user_id), lambda: user_coordinator_of_load(user_id), ttl=access_ttl()
    )


async def auser_coordinator_of(user_id: int) -> list[int]:
    """``user_coordinator_of`` for async code: a hit costs no thread."""
    return await get_cache().aget_or_load(
        coordinator_key(user_id),
        lambda: in_db_thread(user_coordinator_of_load)(user_id),
        ttl=access_ttl(),
    )


def guest_role(
    *, staff: bool, supplier_ids: Iterable[int], coordinator_of: Iterable[int],
    booked: list[dict[str, Any]],
) -> tuple[roles.Role, set[str]]:  # fmt: skip
    """The role on a wedding of a user who may see it, and the categories of their
    suppliers booked on it, from the cached facts: their access (``staff``, their
    ``supplier_ids``), the suppliers they coordinate, and the snapshot's ``booked``
    suppliers (``{"id", "category"}``). Someone who may see it and is not staff and has
    no supplier booked on it is of its couple (``roles.role_on_wedding``)."""
    mine, coordinated = set(supplier_ids), set(coordinator_of)
    acting = [supplier for supplier in booked if supplier["id"] in mine]
    categories = {supplier["category"] for supplier in acting}
    editor = "planner" in categories or any(s["id"] in coordinated for s in acting)
    role = roles.role_on_wedding(staff=staff, acting=bool(acting), editor=editor, couple=True)
    return (role if role is not None else roles.COUPLE), categories  # couple=True: never None


async def aguest_view_for(
    *, user_id: int | None, wedding_id: int, staff: bool, supplier_ids: Iterable[int],
    booked: list[dict[str, Any]],
) -> dict[str, Any] | None:  # fmt: skip
    """The snapshot's ``guests`` for a reader who may see the wedding (None: nothing of
    them), from the cache on the event loop: the guest rows, and for a vendor the
    suppliers they coordinate. ``user_id`` None with ``staff``: an API key (staff's view).
    """
    coordinator_of: list[int] = []
    if not staff and user_id is not None and set(supplier_ids) & {s["id"] for s in booked}:
        coordinator_of = await auser_coordinator_of(user_id)
    role, categories = guest_role(
        staff=staff, supplier_ids=supplier_ids, coordinator_of=coordinator_of, booked=booked
    )
    if not guests_visible(role, categories):
        return None  # nothing to read: the rows are not even fetched
    return guest_view(await awedding_guests(wedding_id), role=role, categories=categories)


def _invalidate(keys: list[str]) -> None:
    if not keys:
        return
    cache = get_cache()

    def drop() -> None:
        for key in keys:
            cache.delete(key)

    drop()
    transaction.on_commit(drop)


def access_invalidate(user_ids: Iterable[int]) -> None:
    """Drop the cached access of these users, now and after the current commit."""
    _invalidate([access_key(user_id) for user_id in sorted(set(user_ids))])


def user_invalidate(user_ids: Iterable[int]) -> None:
    """Drop the cached rows and access of these users, now and after the current commit."""
    ids = sorted(set(user_ids))
    _invalidate([access_key(user_id) for user_id in ids] + [user_key(user_id) for user_id in ids])


def supplier_invalidate(supplier_id: int) -> None:
    """Drop a supplier's cached profile, now and after the current commit."""
    _invalidate([supplier_key(supplier_id)])


def _member_ids(supplier_id: int) -> list[int]:
    return list(
        SupplierMembership.objects.filter(supplier_id=supplier_id).values_list("user_id", flat=True)
    )


# --- receivers (connected on import, by ``realtime.signals`` before its own) ----------


@receiver(post_save, sender=Booking, dispatch_uid="access_booking_saved")
@receiver(post_delete, sender=Booking, dispatch_uid="access_booking_deleted")
def _booking_changed(sender: type, instance: Booking, **kwargs: Any) -> None:
    access_invalidate(_member_ids(instance.supplier_id))


@receiver(post_save, sender=SupplierMembership, dispatch_uid="access_membership_saved")
@receiver(post_delete, sender=SupplierMembership, dispatch_uid="access_membership_deleted")
def _membership_changed(sender: type, instance: SupplierMembership, **kwargs: Any) -> None:
    access_invalidate([instance.user_id])
    _invalidate([coordinator_key(instance.user_id)])


@receiver(m2m_changed, sender=Wedding.couple.through, dispatch_uid="access_couple_changed")
def _couple_changed(
    sender: type, instance: Any, action: str, reverse: bool, pk_set: set | None, **kwargs: Any
) -> None:
    if reverse:  # user.couple_weddings.add(...): the user is the instance
        if action.startswith("post_"):
            access_invalidate([instance.pk])
    elif action == "pre_clear":  # afterwards the cleared users cannot be found
        access_invalidate(instance.couple.values_list("pk", flat=True))
    elif action in ("post_add", "post_remove") and pk_set:
        access_invalidate(pk_set)


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="access_user_saved")
@receiver(post_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="access_user_deleted")
def _user_changed(sender: type, instance: Any, **kwargs: Any) -> None:
    access_invalidate([instance.pk])
    _invalidate([user_key(instance.pk)])


@receiver(post_save, sender=Supplier, dispatch_uid="supplier_profile_saved")
@receiver(post_delete, sender=Supplier, dispatch_uid="supplier_profile_deleted")
def _supplier_changed(sender: type, instance: Supplier, **kwargs: Any) -> None:
    supplier_invalidate(instance.pk)


@receiver(post_save, sender=Guest, dispatch_uid="guests_guest_saved")
@receiver(post_delete, sender=Guest, dispatch_uid="guests_guest_deleted")
def _guest_changed(sender: type, instance: Guest, **kwargs: Any) -> None:
    _invalidate([guests_key(instance.wedding_id)])


@receiver(post_delete, sender=Wedding, dispatch_uid="guests_wedding_deleted")
def _wedding_deleted(sender: type, instance: Wedding, **kwargs: Any) -> None:
    _invalidate([guests_key(instance.pk)])
