"""What a connection reads on connect and subscribe: the limits' facts, the topic check,
presence cards, and the topics' positions for the sweep.

The sync functions run in a database thread (realtime.db.in_db_thread) and batch their
work, so a subscribe frame costs a few queries however many topics it names; the
connect facts come from the cache without a thread. Positions and replay of a
subscribe are in ``realtime.replay``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from wedsync.caching import user_access
from wedsync.models import Booking

from . import topics
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


def authorize_and_describe(
    user: Any, names: list[str]
) -> tuple[list[str], dict[str, RealtimeError], dict[str, dict[str, Any]]]:
    """``authorize_topics``, and the ``member_infos`` of the allowed topics: what a
    subscribe needs before it reads the log, in one database-thread call."""
    allowed, refused = authorize_topics(user, names)
    return allowed, refused, member_infos(user, allowed) if allowed else {}


def member_infos(user: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """What presence shows of a user on each topic: id, name, and their booked supplier.

    One query whatever the number of topics (the active bookings of the user's
    suppliers on the weddings named); the user's suppliers come from the cached access.
    """
    mine = set(user_access(user.pk)["suppliers"])  # the cached list: no query
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


def _topic_positions(names: list[str]) -> dict[str, int]:
    return dict(TopicCursor.objects.filter(topic__in=names).values_list("topic", "last_seq"))


topic_positions = in_db_thread(_topic_positions)


async def connect_facts(user_id: int) -> tuple[tuple[int, ...], bool]:
    """What the connection limits need on connect, from the cache: the user's suppliers
    and whether wedding-day mode is on. Cached values cost no thread; a miss loads in a
    database thread (``DatabaseError`` while the database is unreachable)."""
    from scaling.selectors import CACHE_KEY, wedding_day_mode_load
    from wedsync.cache import get_cache
    from wedsync.caching import auser_access

    access = await auser_access(user_id)
    mode = await get_cache().aget_or_load(CACHE_KEY, in_db_thread(wedding_day_mode_load))
    return tuple(access["suppliers"]), bool(mode["enabled"])
