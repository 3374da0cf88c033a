"""The wedding snapshot of PROTOCOL §9, read consistently and served through the cache.

``snapshot_load`` is the uncached database read; ``snapshot_get`` serves it through the
two-tier cache (key ``snapshot:<id>``, one loader at a time). A cached snapshot is
always internally consistent (its ``seq`` matches its state), so snapshot + events after
``seq`` is exact even when it is a moment old; invalidation keeps it current:

* a stored event on ``wedding:<id>``: dropped when the event is written and again after
  its transaction commits (so a read racing the commit cannot keep the old state);
* domain writes that bypass the event log (admin edits): saves and deletes of Wedding,
  TimelineItem (and its suppliers), Booking and Supplier (a changed phone number too).

The booked suppliers carry their phone numbers; ``snapshot_contacts`` takes them out for
a reader the role matrix does not let read them (``read.contacts``: the couple).

Writes through ``QuerySet.update``/``bulk_create`` send no signals: their callers must
call ``snapshot_invalidate`` themselves (the L1 TTL bounds what they miss otherwise).

(v1.1) A snapshot carries the stream epoch it was read in (``realtime.epoch``), with its
``seq``: the pair says where in which history the client starts. One cached before a bump
(after a restore: another history, and seqs that are handed out again) is never served:
a snapshot whose epoch is not the present one is loaded again (``snapshot_current``).
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from core.cache import get_cache
from realtime import selectors
from realtime.epoch import epoch_current, epoch_load
from realtime.models import Event, StreamEpoch
from weddings import roles
from weddings import selectors as domain
from weddings.models import Booking, Supplier, TimelineItem, Wedding


def snapshot_key(wedding_id: int) -> str:
    """The cache key of a wedding's snapshot."""
    return f"snapshot:{wedding_id}"


def wedding_summary(wedding: Wedding) -> dict[str, Any]:
    """A wedding as the listing and the snapshot show it (PROTOCOL §9)."""
    return {
        "id": wedding.pk,
        "topic": wedding.topic,
        "couple": wedding.couple_names,
        "date": wedding.date.isoformat(),
        "ceremony_time": wedding.ceremony_time.isoformat(timespec="minutes"),
        "time_zone": wedding.time_zone,
        "venue": wedding.venue_name,
        "venue_address": wedding.venue_address,
        "guest_count": wedding.guest_count,
        "status": wedding.status,
        "notes": wedding.notes,
    }


def supplier_summary(supplier: Supplier) -> dict[str, Any]:
    """A booked supplier as the snapshot shows it; ``phone`` only when it has one, and
    only for the readers the role matrix lets call it (``read.contacts``,
    ``snapshot_contacts``)."""
    summary = {"id": supplier.pk, "name": supplier.name, "category": supplier.category}
    if supplier.phone.strip():
        summary["phone"] = supplier.phone.strip()
    return summary


def snapshot_contacts(state: dict[str, Any], *, staff: bool, supplier_ids: Any) -> dict[str, Any]:
    """A snapshot as a reader with these suppliers sees its contacts: the booked
    suppliers' phone numbers for the wedding's members (``read.contacts``), none for the
    couple. ``state`` (shared, from the cache) is not changed."""
    booked = {supplier["id"] for supplier in state["suppliers"]}
    acting = bool(booked.intersection(supplier_ids))
    # Members alike, vendors and planners: never asks which (``editor``).
    if roles.may("read.contacts", staff=staff, acting=acting, editor=bool):
        return state
    suppliers = [
        {key: value for key, value in supplier.items() if key != "phone"}
        for supplier in state["suppliers"]
    ]
    return {**state, "suppliers": suppliers}


def snapshot_load(wedding_id: int) -> dict[str, Any] | None:
    """The wedding's state and the seq it includes, read from the database consistently.

    On PostgreSQL the reads share one REPEATABLE READ snapshot; on SQLite the
    transaction holds the write lock (IMMEDIATE mode), so no event can land between
    the reads. Either way, snapshot + events after ``seq`` is the exact state.
    None for a wedding that does not exist. No authorisation: callers check it. The
    stream epoch is read in the same transaction, so the state, its seq and the history
    they belong to are one consistent read.
    """
    topic = f"wedding:{wedding_id}"
    # Only a transaction's first statement may set its isolation level: inside an outer
    # transaction (a test, a caller's atomic block) the reads join that one instead.
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql" and outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        seq = selectors.topic_seq(topic)
        epoch = (
            StreamEpoch.objects.filter(pk=StreamEpoch.ROW).values_list("epoch", flat=True).first()
        )
        wedding = Wedding.objects.filter(pk=wedding_id).first()
        if wedding is None:
            return None
        timeline = [
            domain.timeline_item_as_dict(item) for item in domain.timeline_for_wedding(wedding.pk)
        ]
        suppliers = [
            supplier_summary(b.supplier)
            for b in wedding.bookings.filter(active=True).select_related("supplier")
        ]
        statuses = selectors.vendor_statuses(topic)
    return {
        "wedding": wedding_summary(wedding),
        "timeline": timeline,
        "suppliers": suppliers,
        "statuses": statuses,
        "seq": seq,
        # No row only when the table was emptied: made outside the snapshot's transaction.
        "epoch": epoch if epoch is not None else epoch_load(),
    }


def snapshot_get(wedding_id: int) -> dict[str, Any] | None:
    """The snapshot through the cache; called by the snapshot API and cache warming.

    ``lock=True``: a snapshot costs several queries, so concurrent misses (a whole
    wedding's vendors reconnecting at once) load it once, across processes too. One of
    another stream epoch is loaded again (``snapshot_current``).
    """
    key, cache = snapshot_key(wedding_id), get_cache()
    state = cache.get_or_load(key, lambda: snapshot_load(wedding_id), lock=True)
    if snapshot_current(state, epoch_current()):
        return state
    cache.delete(key)
    return cache.get_or_load(key, lambda: snapshot_load(wedding_id), lock=True)


def snapshot_current(state: dict[str, Any] | None, epoch: str) -> bool:
    """Whether a cached snapshot may be served in ``epoch``: one read in another epoch is
    of another history (cached before a bump), or from a server without epochs (a rolling
    deploy). Its caller loads it again, once: when the reload disagrees too, the process's
    epoch is the stale one (within ``realtime.epoch.EPOCH_BOUND``) and the reload, read
    from the database with its epoch, is served."""
    return state is None or state.get("epoch") == epoch


def snapshot_invalidate(wedding_id: int) -> None:
    """Drop a wedding's cached snapshot now and once more after the current commit.

    Now: a read later in this transaction (or in a test's) sees the change. After
    commit: a reader that loaded the old state between the two cannot keep it.
    """
    key = snapshot_key(wedding_id)
    cache = get_cache()
    cache.delete(key)
    # Outside a transaction the write has already committed. Inside one, one drop after
    # the commit is enough however many writes of the wedding it holds (a timeline
    # publish invalidates for its item and for its event): a Redis round trip saved per
    # extra write. An earlier drop that a rolled-back savepoint discarded is no longer in
    # Django's list, so it is registered again.
    if connection.in_atomic_block and not any(
        getattr(func, "snapshot_key", None) == key for _, func, _ in connection.run_on_commit
    ):
        transaction.on_commit(_DropAfterCommit(cache, key))


class _DropAfterCommit:
    """The on-commit drop of one snapshot key (``snapshot_invalidate``), marked with it."""

    __slots__ = ("cache", "snapshot_key")

    def __init__(self, cache: Any, key: str) -> None:
        self.cache, self.snapshot_key = cache, key

    def __call__(self) -> None:
        self.cache.delete(self.snapshot_key)


# --- receivers (connected on import, by ``realtime.signals``) --------------------------


def event_stored(event: Event) -> None:
    """Drop the snapshot of the wedding an event was stored on (its seq moved on).

    Called by ``realtime.services`` for every stored event, on both write paths, while
    the event is written and before its broadcast is queued (both run on commit in
    order): a client that refetches on the event reads the new snapshot."""
    kind, _, raw_id = event.topic.partition(":")
    if kind == "wedding" and raw_id.isdigit():
        snapshot_invalidate(int(raw_id))


@receiver(post_save, sender=Wedding, dispatch_uid="snapshot_wedding_saved")
@receiver(post_delete, sender=Wedding, dispatch_uid="snapshot_wedding_deleted")
def _wedding_changed(sender: type, instance: Wedding, **kwargs: Any) -> None:
    snapshot_invalidate(instance.pk)


@receiver(post_save, sender=TimelineItem, dispatch_uid="snapshot_item_saved")
@receiver(post_delete, sender=TimelineItem, dispatch_uid="snapshot_item_deleted")
@receiver(post_save, sender=Booking, dispatch_uid="snapshot_booking_saved")
@receiver(post_delete, sender=Booking, dispatch_uid="snapshot_booking_deleted")
def _wedding_part_changed(sender: type, instance: TimelineItem | Booking, **kwargs: Any) -> None:
    snapshot_invalidate(instance.wedding_id)


@receiver(m2m_changed, sender=TimelineItem.suppliers.through, dispatch_uid="snapshot_item_m2m")
def _item_suppliers_changed(
    sender: type, instance: Any, action: str, reverse: bool, pk_set: set | None, **kwargs: Any
) -> None:
    if not reverse:
        if action.startswith("post_"):
            snapshot_invalidate(instance.wedding_id)
        return
    # From the supplier's side: the weddings of the items named, or of all its items
    # before a clear (afterwards there are none left to find).
    if action == "pre_clear":
        items = TimelineItem.objects.filter(suppliers=instance)
    elif action in ("post_add", "post_remove") and pk_set:
        items = TimelineItem.objects.filter(pk__in=pk_set)
    else:
        return
    for wedding_id in set(items.values_list("wedding_id", flat=True)):
        snapshot_invalidate(wedding_id)


@receiver(post_save, sender=Supplier, dispatch_uid="snapshot_supplier_saved")
def _supplier_saved(sender: type, instance: Supplier, created: bool = False, **kwargs: Any) -> None:
    # Snapshots show the name, category and phone number of each booked supplier.
    if created:
        return
    for wedding_id in set(instance.bookings.values_list("wedding_id", flat=True)):
        snapshot_invalidate(wedding_id)
