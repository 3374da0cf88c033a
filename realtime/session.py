"""Database reads a connection needs: authorising topics, sync positions, presence info.

Each function is sync (it runs in a database thread through realtime.db.in_db_thread)
and batches its work, so a subscribe frame costs a few queries however many topics it
names.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from wedsync import selectors as domain
from wedsync.models import Booking

from . import selectors, topics
from .db import in_db_thread
from .errors import RealtimeError
from .models import TopicCursor


def authorize_topics(user: Any, names: list[str]) -> tuple[list[str], dict[str, RealtimeError]]:
    """Split requested topics into those the user may join and the refused ones."""
    allowed: list[str] = []
    refused: dict[str, RealtimeError] = {}
    for name in names:
        try:
            topics.authorize_subscribe(user, name)
        except RealtimeError as err:
            refused[name] = err
        else:
            allowed.append(name)
    if len(names) == 1 and refused:
        raise refused[names[0]]
    return allowed, refused


def still_allowed(user_id: int, topic: str) -> bool:
    """Re-check a live subscription after a booking or membership change."""
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None:
        return False
    try:
        # Uncached: this runs right after an access change and must see it exactly.
        topics.authorize_subscribe(user, topic, cached=False)
    except RealtimeError:
        return False
    return True


def member_infos(user: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """What presence shows of a user on each topic: id, name, and their booked supplier.

    Two queries whatever the number of topics: the user's suppliers, then the active
    bookings of those suppliers on the weddings named.
    """
    mine = domain.user_supplier_ids(user)
    parsed = {name: topics.parse_topic(name) for name in names}
    wedding_ids = [t.id for t in parsed.values() if t.kind == "wedding"]
    booked: dict[int, set[int]] = {}
    if mine and wedding_ids:
        rows = Booking.objects.filter(
            active=True, supplier_id__in=mine, wedding_id__in=wedding_ids
        ).values_list("wedding_id", "supplier_id")
        for wedding_id, supplier_id in rows:
            booked.setdefault(wedding_id, set()).add(supplier_id)
    name = user.get_full_name() or user.get_username()
    infos = {}
    for topic, parsed_topic in parsed.items():
        supplier_id = None
        if parsed_topic.kind == "wedding" and booked.get(parsed_topic.id):
            supplier_id = min(booked[parsed_topic.id])
        elif parsed_topic.kind == "supplier":
            supplier_id = parsed_topic.id
        infos[topic] = {"user_id": user.pk, "name": name, "supplier_id": supplier_id}
    return infos


def _sync_positions(since: dict[str, int | None]) -> dict[str, tuple[int, bool, int]]:
    """Per topic: (current seq, recovered, seq to resume delivery after).

    With ``since`` inside the retained history the connection resumes after ``since``
    and the events ``since+1 … seq`` are replayed. Outside it (pruned, or a ``since``
    beyond the topic's seq) ``recovered`` is False and delivery resumes after ``seq``:
    the client reloads the snapshot (PROTOCOL §4).
    """
    out: dict[str, tuple[int, bool, int]] = {}
    for topic, after in since.items():
        seq = selectors.topic_seq(topic)
        if after is None:
            out[topic] = (seq, True, seq)
            continue
        recovered = after <= seq and selectors.replay_covers(topic, after)
        out[topic] = (seq, recovered, after if recovered else seq)
    return out


sync_positions = in_db_thread(_sync_positions)


def _topic_positions(names: list[str]) -> dict[str, int]:
    return dict(TopicCursor.objects.filter(topic__in=names).values_list("topic", "last_seq"))


topic_positions = in_db_thread(_topic_positions)


def connect_facts(user_id: int) -> tuple[tuple[int, ...], bool]:
    """What the connection limits need on connect, from the cache: the user's suppliers
    and whether wedding-day mode is on."""
    from scaling.selectors import wedding_day_mode
    from wedsync.caching import user_access

    suppliers = tuple(user_access(user_id)["suppliers"])
    return suppliers, bool(wedding_day_mode()["enabled"])
