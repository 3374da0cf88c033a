"""Reads of the event log (a topic's seq, the events after a seq, replay, acknowledgements)
and of read-only mode.

Callers pass topic strings that ``realtime.topics`` has already parsed and authorised.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from core.switches import Switch
from realtime.models import Ack, Event, ReadOnlyModeChange, TopicCursor
from realtime.protocol import utc_ms
from weddings import selectors as wedsync_selectors


def topic_seq(topic: str) -> int:
    """The seq of the topic's latest stored event; 0 for a topic without events."""
    last = TopicCursor.objects.filter(topic=str(topic)).values_list("last_seq", flat=True).first()
    return last or 0


def events_since(topic: str, since: int, limit: int = 500) -> list[Event]:
    """The stored events with seq > ``since``, in seq order, at most ``limit`` of them.

    Used to fill a gap before delivering a later event, and by the history API.
    """
    return list(
        Event.objects.filter(topic=str(topic), seq__gt=since).order_by("seq")[: max(limit, 0)]
    )


# Kinds of event retention may keep below what it pruned (services.events_prune keeps open
# emergencies and each supplier's latest status): islands under a gap in the log.
KEPT_PAST_RETENTION = ("emergency.raised", "vendor.status")


def oldest_retained_seq(topic: str) -> int:
    """The lowest seq from which the topic's log is whole up to its newest stored event;
    ``topic_seq + 1`` when none is stored.

    Usually the lowest stored seq. Retention keeps a few events (open emergencies, latest
    statuses) below what it pruned; when the lowest stored event is of such a kind, the
    whole run is found from the lowest event of any other kind (pruning deleted every
    other kind below it) downwards to the first gap.
    """
    rows = Event.objects.filter(topic=str(topic))
    first = rows.order_by("seq").values_list("seq", "event").first()
    if first is None:
        return topic_seq(topic) + 1
    if first[1] not in KEPT_PAST_RETENTION:
        return first[0]
    start = (
        rows.exclude(event__in=KEPT_PAST_RETENTION)
        .order_by("seq")
        .values_list("seq", flat=True)
        .first()
    )
    below = rows.order_by("-seq")
    if start is not None:
        below = below.filter(seq__lt=start)
    for seq in below.values_list("seq", flat=True).iterator(chunk_size=1000):
        if start is not None and seq != start - 1:
            break
        start = seq
    return start if start is not None else first[0]


def replay_covers(topic: str, since: int) -> bool:
    """Whether every event after ``since`` is still stored (none was pruned).

    A ``since`` at or beyond the topic's seq is covered (nothing is missing); callers
    that must refuse a ``since`` ahead of the topic check ``since <= topic_seq`` first.
    """
    since = int(since)
    rows = Event.objects.filter(topic=str(topic))
    first = rows.order_by("seq").values_list("seq", "event").first()
    if first is None or first[1] not in KEPT_PAST_RETENTION:
        return since >= (topic_seq(topic) + 1 if first is None else first[0]) - 1
    # Retention kept events below what it pruned (``oldest_retained_seq``): rather than
    # walk down to the gap, count. Seqs are unique, so the log is whole after ``since``
    # exactly when every seq up to the cursor's is stored: one index-only count, where a
    # replay flood asked the walk (three queries and a server-side cursor) every time.
    seq = topic_seq(topic)
    return since >= seq or rows.filter(seq__gt=since, seq__lte=seq).count() == seq - since


def acked_user_ids(event: Event) -> list[int]:
    """The users who acknowledged an event, in the order they did."""
    return list(
        Ack.objects.filter(event=event)
        .order_by("created_at", "id")
        .values_list("user_id", flat=True)
    )


def acting_supplier_id(user: Any, topic: str) -> int | None:
    """The supplier a user acts for on a topic: the lowest id of their booked suppliers.

    On ``supplier:<id>`` it is that supplier when the user works for it; on ``ops`` none.
    """
    kind, _, raw_id = str(topic).partition(":")
    if not raw_id or user is None or not getattr(user, "is_authenticated", False):
        return None
    mine = wedsync_selectors.user_supplier_ids(user)
    if kind == "supplier":
        return int(raw_id) if int(raw_id) in mine else None
    if not mine:
        return None
    acting = mine & wedsync_selectors.active_supplier_ids(int(raw_id))
    return min(acting) if acting else None


def vendor_statuses(topic: str) -> list[dict[str, Any]]:
    """The latest ``vendor.status`` of each supplier booked on a wedding topic, for snapshots.

    Each entry is the stored payload plus the ``seq`` and ``ts`` of its event, ordered by
    supplier id. Suppliers no longer booked are left out; statuses older than retention
    are gone with their events.
    """
    kind, _, raw_id = str(topic).partition(":")
    if kind != "wedding" or not raw_id:
        return []
    booked = wedsync_selectors.active_supplier_ids(int(raw_id))
    if not booked:
        return []
    latest: dict[int, dict[str, Any]] = {}
    rows = (
        Event.objects.filter(topic=str(topic), event="vendor.status")
        .order_by("-seq")
        .values_list("seq", "payload", "created_at")
    )
    for seq, payload, created_at in rows.iterator(chunk_size=200):
        supplier_id = payload.get("supplier_id")
        if supplier_id in booked and supplier_id not in latest:
            latest[supplier_id] = {**payload, "seq": seq, "ts": utc_ms(created_at)}
            if len(latest) == len(booked):
                break
    return [latest[supplier_id] for supplier_id in sorted(latest)]


# Read-only (maintenance) mode: an audited switch (core.switches), registered in
# RealtimeConfig.ready.
READ_ONLY_MODE = Switch("read_only_mode", ReadOnlyModeChange)
READ_ONLY_CACHE_KEY = READ_ONLY_MODE.name


def read_only_mode_load() -> dict[str, Any]:
    """The current read-only mode from the database: the latest change, or off."""
    return READ_ONLY_MODE.load()


def read_only_mode() -> dict[str, Any]:
    """``{"enabled", "reason", "changed_by", "changed_at"}``, read on every publish: cached."""
    return READ_ONLY_MODE.state()


def resolved_emergencies(
    topics: Iterable[str], *, seq_upto: int | None = None, since: dt.datetime | None = None
) -> set[tuple[str, Any]]:
    """``(topic, emergency id)`` of every ``emergency.resolved`` event on ``topics`` (up to
    ``seq_upto``, stored since ``since``): an ``emergency.raised`` whose pair is here is no
    longer open. The one reading of "resolved" for the live page and the overdue-ack rule."""
    rows = Event.objects.filter(topic__in=list(topics), event="emergency.resolved")
    if seq_upto is not None:
        rows = rows.filter(seq__lte=seq_upto)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    return {(topic, payload.get("id")) for topic, payload in rows.values_list("topic", "payload")}
