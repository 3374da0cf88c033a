"""A connection's access, read on connect and subscribe: the facts the connection limits
need (``connect_facts``), the topic check with the presence card each allowed topic shows
of the user (``authorize_and_describe``), and the re-check after an access change
(``still_allowed``).

The sync functions run in a database thread (core.db.in_db_thread) and batch their
work, so a subscribe frame costs a few queries however many topics it names; the
connect facts come from the cache without a thread. Positions and replay of a
subscribe are in ``realtime.replay``.

``connections_recheck`` is the periodic (and per-user) re-check of open connections: one
batch of queries for many connections, whatever their number (``realtime.consumer_registry``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model

from core import switches
from core.cache import get_cache
from weddings import selectors as domain
from weddings.caching import auser_access, user_access, user_invalidate
from weddings.models import Booking, Supplier, SupplierMembership, Wedding

from . import topics
from .errors import RealtimeError
from .models import TokenVersion
from .tokens import CONNECT_VERSION_ATTR


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


# Users per batch of ``connections_recheck``: keeps each IN list well within what any
# database accepts; 10,000 connections of 10,000 users cost 20 batches of 4-7 queries.
RECHECK_BATCH = 500


@dataclass
class _Facts:
    """What the access of a batch of users rests on, read fresh from the database."""

    users: dict[int, Any]
    versions: dict[int, int] = field(default_factory=dict)
    suppliers: dict[int, set[int]] = field(default_factory=dict)
    couple: set[tuple[int, int]] = field(default_factory=set)  # (user, wedding)
    booked: set[tuple[int, int]] = field(default_factory=set)  # (supplier, wedding), active
    weddings: set[int] = field(default_factory=set)  # existing, of the topics (for staff)
    supplier_ids: set[int] = field(default_factory=set)  # existing, of the topics (for staff)

    @classmethod
    def load(cls, user_ids: list[int], names: set[str]) -> _Facts:
        parsed = [topics.parse_topic(name) for name in names]
        wedding_ids = {t.id for t in parsed if t.kind == "wedding"}
        supplier_topics = {t.id for t in parsed if t.kind == "supplier"}
        facts = cls(get_user_model()._default_manager.in_bulk(user_ids))
        facts.versions = dict(
            TokenVersion.objects.filter(user_id__in=user_ids).values_list("user_id", "version")
        )
        memberships = SupplierMembership.objects.filter(user_id__in=user_ids)
        suppliers: dict[int, set[int]] = defaultdict(set)
        for user_id, supplier_id in memberships.values_list("user_id", "supplier_id"):
            suppliers[user_id].add(supplier_id)
        facts.suppliers = suppliers
        if wedding_ids:
            facts._load_weddings(user_ids, wedding_ids)
        if any(u.is_staff for u in facts.users.values()):
            facts.weddings = set(
                Wedding.objects.filter(pk__in=wedding_ids).values_list("pk", flat=True)
            )
            facts.supplier_ids = set(
                Supplier.objects.filter(pk__in=supplier_topics).values_list("pk", flat=True)
            )
        return facts

    def _load_weddings(self, user_ids: list[int], wedding_ids: set[int]) -> None:
        self.couple = set(
            Wedding.couple.through.objects.filter(
                user_id__in=user_ids, wedding_id__in=wedding_ids
            ).values_list("user_id", "wedding_id")
        )
        mine = set().union(*self.suppliers.values()) if self.suppliers else set()
        if mine:
            self.booked = set(
                Booking.objects.filter(
                    active=True, supplier_id__in=mine, wedding_id__in=wedding_ids
                ).values_list("supplier_id", "wedding_id")
            )

    def verdict(self, user: Any, names: list[str]) -> list[str] | None:
        """None when the connection must close (user gone or inactive, password or
        token version changed since it connected), else the topics it lost."""
        now = self.users.get(user.pk)
        if now is None or not now.is_active or now.password != user.password:
            return None
        at_connect = getattr(user, CONNECT_VERSION_ATTR, None)  # token connections
        if at_connect is not None and at_connect != self.versions.get(user.pk, 0):
            return None
        return [name for name in names if not self._may(now, topics.parse_topic(name))]

    def _may(self, user: Any, topic: topics.Topic) -> bool:
        """``topics._may_subscribe`` on these facts (the user is active)."""
        if topic.kind == "wedding":
            if user.is_staff:
                return topic.id in self.weddings
            if (user.pk, topic.id) in self.couple:
                return True
            return any((s, topic.id) in self.booked for s in self.suppliers.get(user.pk, ()))
        if topic.kind == "supplier":
            if user.is_staff:
                return topic.id in self.supplier_ids
            return topic.id in self.suppliers.get(user.pk, ())
        return bool(user.is_staff)  # ops


def connections_recheck(
    connections: list[tuple[Any, list[str]]],
) -> tuple[list[list[str] | None], dict[int, Any]]:
    """Re-check open connections against the database (runs in a database thread).

    ``connections``: each connection's user as it connected, and its topics. Returns,
    in the same order, None for a connection that must close with 4001 (see
    ``_Facts.verdict``) or the topics it may no longer see; and the users as they are
    now, by id. A few queries per RECHECK_BATCH users, however many connections.
    """
    by_user: dict[int, list[int]] = defaultdict(list)
    for index, (user, _) in enumerate(connections):
        by_user[user.pk].append(index)
    verdicts: list[list[str] | None] = [None] * len(connections)
    fresh: dict[int, Any] = {}
    changed: set[int] = set()  # users whose cached row or access may be stale
    ids = sorted(by_user)
    for start in range(0, len(ids), RECHECK_BATCH):
        batch = ids[start : start + RECHECK_BATCH]
        indexes = [index for user_id in batch for index in by_user[user_id]]
        names = {name for index in indexes for name in connections[index][1]}
        facts = _Facts.load(batch, names)
        fresh.update(facts.users)
        for index in indexes:
            user, topic_names = connections[index]
            verdicts[index] = verdict = facts.verdict(user, topic_names)
            now = facts.users.get(user.pk)
            if verdict is None or verdict or now is None or now.is_staff != user.is_staff:
                changed.add(user.pk)
    if changed:  # a bulk update told the cache nothing
        user_invalidate(changed)
    return verdicts, fresh
