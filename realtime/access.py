"""A connection's access, read on connect and subscribe: the facts the connection limits
need (``connect_facts``), the topic check with the presence card each allowed topic shows
of the user (``authorize_and_describe``), and the re-check after an access change
(``still_allowed``).

The sync functions run in a database thread (core.db.in_db_thread) and batch their
work, so a subscribe frame costs a few queries however many topics it names; the
connect facts come from the cache without a thread. Positions and replay of a
subscribe are in ``realtime.replay``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from core import switches
from core.cache import get_cache
from weddings import selectors as domain
from weddings.caching import auser_access, user_access

from . import topics
from .errors import RealtimeError


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


def booked_suppliers_key(wedding_id: int) -> str:
    """The cache key of a wedding's booked suppliers (``realtime.signals`` drops it)."""
    return f"booked_suppliers:{wedding_id}"


# Presence cards are cosmetic: what a bulk update that sends no signal left in the cache
# is gone after this long. Saves and deletes of a booking drop the key at once.
BOOKED_SUPPLIERS_TTL_S = 3600


def booked_supplier_ids(wedding_id: int) -> list[int]:
    """The suppliers with an active booking on a wedding, through the cache."""
    return get_cache().get_or_load(
        booked_suppliers_key(wedding_id),
        lambda: sorted(domain.active_supplier_ids(wedding_id)),
        ttl=BOOKED_SUPPLIERS_TTL_S,
    )


def member_infos(user: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """What presence shows of a user on each topic: id, name, and their booked supplier
    (the lowest id of their suppliers booked on the wedding).

    From the cache (the user's suppliers, each wedding's booked suppliers): a subscribe
    of a reconnect storm costs no query for it.
    """
    mine = set(user_access(user.pk)["suppliers"])
    name = user.get_full_name() or user.get_username()
    infos = {}
    for topic in names:
        parsed = topics.parse_topic(topic)
        supplier_id = None
        if parsed.kind == "wedding" and mine:
            booked = mine.intersection(booked_supplier_ids(parsed.id))  # type: ignore[arg-type]
            supplier_id = min(booked) if booked else None
        elif parsed.kind == "supplier":
            supplier_id = parsed.id
        infos[topic] = {"user_id": user.pk, "name": name, "supplier_id": supplier_id}
    return infos


async def connect_facts(user_id: int) -> tuple[tuple[int, ...], bool]:
    """What the connection limits need on connect, from the cache: the user's suppliers
    and whether wedding-day mode is on. Cached values cost no thread; a miss loads in a
    database thread (``DatabaseError`` while the database is unreachable)."""
    access = await auser_access(user_id)
    mode = await switches.astate("wedding_day_mode")
    return tuple(access["suppliers"]), bool(mode["enabled"])
