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
from weddings import roles
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


def still_allowed(user_id: int, topic: str, *, full_view: bool = False) -> bool:
    """Re-check a live subscription after a booking or membership change; with
    ``full_view``, also that the user still reads the wedding's coordination (a vendor
    taken off a wedding whose couple they are in keeps the run sheet, not the feed: the
    subscription ends, and a new one gets the couple's view)."""
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None:
        return False
    try:
        # Uncached: this runs right after an access change and must see it exactly.
        parsed = topics.authorize_subscribe(user, topic, cached=False)
    except RealtimeError:
        return False
    if full_view and parsed.kind == "wedding":
        acting = bool(domain.user_acting_supplier_ids(user, parsed.id))  # type: ignore[arg-type]
        return _reads_coordination(bool(user.is_staff), acting)
    return True


def _reads_coordination(staff: bool, acting: bool) -> bool:
    """The matrix's ``read.coordination`` for a member of a wedding."""
    # Vendors and planners alike: never asks which (``editor``).
    return roles.may("read.coordination", staff=staff, acting=acting, editor=bool)


def plan_only_on(user: Any, wedding_id: int) -> bool:
    """Whether ``user``, who may see the wedding, reads its run sheet only (the couple):
    from the database, for the HTTP history."""
    acting = bool(domain.user_acting_supplier_ids(user, wedding_id))
    return not _reads_coordination(bool(user.is_staff), acting)


def snapshot_view(state: dict[str, Any], *, staff: bool, supplier_ids: Any) -> dict[str, Any]:
    """A wedding snapshot as a user with these suppliers sees it: the statuses without
    their coordination fields for a reader of the run sheet only. ``state`` (shared, from
    the cache) is not changed."""
    booked = {supplier["id"] for supplier in state["suppliers"]}
    if _reads_coordination(staff, bool(booked.intersection(supplier_ids))):
        return state
    statuses = [roles.redacted_payload("vendor.status", status) for status in state["statuses"]]
    return {**state, "statuses": statuses}


def authorize_and_describe(
    user: Any, names: list[str]
) -> tuple[list[str], dict[str, RealtimeError], dict[str, dict[str, Any]], set[str]]:
    """``authorize_topics``, the ``member_infos`` of the allowed topics, and those of
    them the user sees only the run sheet of (the couple's view, ``plan_only``): what a
    subscribe needs before it reads the log, in one database-thread call."""
    allowed, refused = authorize_topics(user, names)
    infos = member_infos(user, allowed) if allowed else {}
    return allowed, refused, infos, plan_only(user, infos)


def plan_only(user: Any, infos: dict[str, dict[str, Any]]) -> set[str]:
    """The wedding topics of ``infos`` (``member_infos``) whose coordination the user may
    not read (``weddings.roles``): their events reach them through
    ``protocol.plan_view_text``. From the cached access, like the subscribe check."""
    staff = bool(user.is_staff and user_access(user.pk)["staff"])
    return {
        topic
        for topic, info in infos.items()
        if topic.startswith("wedding:")
        and not _reads_coordination(staff, info["supplier_id"] is not None)
    }


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

    def verdict(
        self, user: Any, names: list[str], full_view: frozenset[str] = frozenset()
    ) -> list[str] | None:
        """None when the connection must close (user gone or inactive, password or
        token version changed since it connected), else the topics it lost: those it may
        no longer join, and those of ``full_view`` whose coordination it no longer reads."""
        now = self.users.get(user.pk)
        if now is None or not now.is_active or now.password != user.password:
            return None
        at_connect = getattr(user, CONNECT_VERSION_ATTR, None)  # token connections
        if at_connect is not None and at_connect != self.versions.get(user.pk, 0):
            return None
        return [
            name
            for name in names
            if not self._may(now, topics.parse_topic(name))
            or (name in full_view and not self._reads_coordination(now, topics.parse_topic(name)))
        ]

    def _reads_coordination(self, user: Any, topic: topics.Topic) -> bool:
        acting = any((s, topic.id) in self.booked for s in self.suppliers.get(user.pk, ()))
        return _reads_coordination(bool(user.is_staff), acting)

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
    connections: list[tuple[Any, list[str]] | tuple[Any, list[str], frozenset[str]]],
) -> tuple[list[list[str] | None], dict[int, Any]]:
    """Re-check open connections against the database (runs in a database thread).

    ``connections``: each connection's user as it connected, its topics, and optionally
    the wedding topics it reads in full (not ``plan_only``). Returns,
    in the same order, None for a connection that must close with 4001 (see
    ``_Facts.verdict``) or the topics it may no longer see; and the users as they are
    now, by id. A few queries per RECHECK_BATCH users, however many connections.
    """
    by_user: dict[int, list[int]] = defaultdict(list)
    for index, (user, *_) in enumerate(connections):
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
            user, topic_names, *full_view = connections[index]
            verdicts[index] = verdict = facts.verdict(user, topic_names, *full_view)
            now = facts.users.get(user.pk)
            if verdict is None or verdict or now is None or now.is_staff != user.is_staff:
                changed.add(user.pk)
    if changed:  # a bulk update told the cache nothing
        user_invalidate(changed)
    return verdicts, fresh
