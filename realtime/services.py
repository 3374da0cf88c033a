"""Writes of the event log: publish an event, record an acknowledgement, prune old events.

This is the only module that publishes (STYLE §2): grep ``event_publish`` to find every
broadcast. A publish authorises, validates, applies the event's effects on the wedding,
allocates the topic's next seq and stores the event in ONE transaction, and broadcasts
only after that transaction commits. Anything raised leaves nothing stored.

Seq allocation: the topic's ``TopicCursor`` row is locked (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite's IMMEDIATE transactions take the database write lock at BEGIN) and
kept locked until commit, so publishes of one topic are serialised: seqs are gapless,
commit in seq order, and the effects on the wedding happen in seq order too. Events
that only store (``EventSpec.stores_only``: messages and statuses) take the
same lock inside one statement on PostgreSQL (``_append_one_statement``, ADR 0010).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.db.models.fields.json import KT
from django.dispatch import Signal
from django.utils import timezone

from core import metrics
from core.cache import get_cache
from core.switches import switch_reason_clean
from realtime import catalogue, selectors, snapshots
from realtime.broadcast import broadcast_event
from realtime.catalogue import invalid
from realtime.errors import RealtimeError, role_forbidden
from realtime.models import Ack, Event, IdempotencyKey, ReadOnlyModeChange, TopicCursor
from realtime.topics import authorize_subscribe, parse_topic, publish_access
from weddings import roles
from weddings import selectors as wedsync_selectors

logger = logging.getLogger(__name__)

# PROTOCOL §4: the same key from the same user within 24 h returns the first seq.
IDEMPOTENCY_TTL = dt.timedelta(hours=24)
_IDEMPOTENCY_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EVENT_NAME_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
# The topics' ordering locks (``_in_order``): a topic hashes to one of them.
_ORDER_LOCKS = tuple(threading.RLock() for _ in range(64))
# Pruning deletes in slices so that no single statement holds locks for long.
PRUNE_BATCH = 2000
# Sent inside the storing transaction for every stored event (``event=``), whichever path
# stored it: a hook for apps above this one (outbound webhooks, ADR 0023). A receiver must
# be cheap and defer real work to ``transaction.on_commit``.
event_stored = Signal()


@dataclass(frozen=True)
class PublishResult:
    """The stored event, and whether this call stored it (False: an idempotent repeat)."""

    event: Event
    created: bool


@dataclass(frozen=True)
class AckResult:
    """An acknowledgement: the event, whether it is new, who acked, the ack.updated sent."""

    event: Event
    created: bool
    acked: list[int]
    update: Event | None = None

    @property
    def seq(self) -> int:
        """The acknowledged event's seq (what the ack reply carries)."""
        return self.event.seq


def writable_check() -> None:
    """Raise ``unavailable`` with the operator's reason while read-only mode is on."""
    mode = selectors.read_only_mode()
    if mode["enabled"]:
        raise RealtimeError(
            "unavailable",
            f"WedSync is read-only for maintenance ({mode['reason']}); nothing was stored,"
            " send it again later",
            read_only=True,
        )


def read_only_mode_set(*, enabled: bool, reason: str, user: Any) -> ReadOnlyModeChange:
    """Switch read-only (maintenance) mode on or off, recording who did it and why.

    ``reason`` is required (1 to 500 characters, not blank); ``user`` may be None for
    an automated change. Raises ``ValidationError`` naming the field; nothing is stored.
    """
    reason = switch_reason_clean(enabled, reason)
    changed_by = user if user is not None and getattr(user, "pk", None) else None
    cache = get_cache()
    with transaction.atomic():
        change = ReadOnlyModeChange.objects.create(
            enabled=enabled, reason=reason, changed_by=changed_by
        )
        cache.delete(selectors.READ_ONLY_CACHE_KEY)
        transaction.on_commit(lambda: cache.delete(selectors.READ_ONLY_CACHE_KEY))
    logger.warning("read-only mode %s: %s", "on" if enabled else "off", reason)
    return change


def _lock_cursor(topic: str) -> TopicCursor:
    """The topic's cursor, locked until the end of the current transaction."""
    cursor = TopicCursor.objects.select_for_update().filter(topic=topic).first()
    if cursor is None:
        # First event of the topic. Two publishers may race to create the row: the
        # loser's insert fails (after waiting for the winner's commit on PostgreSQL)
        # inside its savepoint, and it locks the winner's row instead.
        try:
            with transaction.atomic():
                cursor = TopicCursor.objects.create(topic=topic, last_seq=0)
        except IntegrityError:
            cursor = TopicCursor.objects.select_for_update().get(topic=topic)
    return cursor


def _append(
    cursor: TopicCursor,
    *,
    event: str,
    payload: dict[str, Any],
    user_id: int | None,
    supplier_id: int | None,
    priority: str,
    ack_required: bool,
    idempotency_key: str | None = None,
) -> Event:
    """Store the next event of a locked cursor's topic; broadcast it once committed."""
    cursor.last_seq += 1
    TopicCursor.objects.filter(pk=cursor.pk).update(last_seq=cursor.last_seq)
    stored = Event.objects.create(
        topic=cursor.topic,
        seq=cursor.last_seq,
        event=event,
        payload=payload,
        actor_user_id=user_id,
        actor_supplier_id=supplier_id,
        priority=priority,
        ack_required=ack_required,
        idempotency_key=idempotency_key,
    )
    _stored(stored)
    return stored


def _in_order(topic: str) -> AbstractContextManager[Any]:
    """The topic's ordering lock in this process, to hold from before its cursor row is
    locked until the commit's broadcast is handed over: two threads storing seqs N and
    N+1 then hand them to the event loop in that order, and no subscriber of this
    process sees a gap it must read from the database (``realtime.broadcast``).

    Inside a caller's transaction it is not taken: the broadcast waits for that
    transaction's commit anyway, and holding it there could deadlock against the row
    locks the caller keeps. Every path that locks a cursor row outside one takes it first.
    """
    if connection.in_atomic_block:
        return nullcontext()
    return _ORDER_LOCKS[hash(topic) % len(_ORDER_LOCKS)]


def _stored(stored: Event) -> None:
    """What follows every stored event, whichever path wrote it: the wedding's snapshot is
    dropped now (its seq moved on) and, once the transaction commits, the broadcast and
    the publish counter."""
    snapshots.event_stored(stored)
    transaction.on_commit(partial(broadcast_event, stored))
    transaction.on_commit(partial(metrics.published, stored.event, stored.priority))
    event_stored.send(sender=Event, event=stored)


def _append_one_statement(
    topic: str,
    *,
    event: str,
    payload: dict[str, Any],
    user_id: int,
    supplier_id: int | None,
    priority: str,
    ack_required: bool,
    idempotency_key: str | None,
) -> Event | None:
    """Store the topic's next event in ONE statement (PostgreSQL), or return None.

    The statement takes the next seq from the topic's cursor row (``UPDATE ... RETURNING``
    holds the row lock until the statement commits, so seqs stay gapless and commit in
    order), inserts the event and its idempotency key, and commits alone: one round trip
    instead of five. None, with nothing written, when the general path must run: the
    topic has no cursor row yet (its first event), or the key is already taken (a
    repeat, a twin, or an expired key to drop). Only for ``stores_only`` events, whose
    ``apply`` wrote nothing that needed the topic's lock (docs/adr/0010).
    """
    now = timezone.now()
    sql = f"""
        WITH next AS (
            UPDATE {TopicCursor._meta.db_table} SET last_seq = last_seq + 1
            WHERE topic = %s RETURNING last_seq
        ), stored AS (
            INSERT INTO {Event._meta.db_table} (topic, seq, event, payload, actor_user_id,
                actor_supplier_id, priority, ack_required, idempotency_key, created_at)
            SELECT %s, last_seq, %s, %s::jsonb, %s, %s, %s, %s, %s, %s FROM next
            RETURNING id, seq
        ), keyed AS (
            INSERT INTO {IdempotencyKey._meta.db_table} (user_id, key, topic, seq, created_at)
            SELECT %s, %s, %s, seq, %s FROM stored WHERE %s
        )
        SELECT id, seq FROM stored
    """  # noqa: S608 -- table names from _meta, every value a parameter
    params = [
        *(topic, topic, event, orjson.dumps(payload).decode(), user_id, supplier_id),
        *(priority, ack_required, idempotency_key, now),
        *(user_id, idempotency_key, topic, now, idempotency_key is not None),
    ]
    with _in_order(topic):
        try:
            # Inside a caller's transaction, a savepoint: a taken key must not abort it.
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                    row = cursor.fetchone()
        except IntegrityError:
            return None
        if row is None:
            return None
        stored = Event(
            id=row[0],
            topic=topic,
            seq=row[1],
            event=event,
            payload=payload,
            actor_user_id=user_id,
            actor_supplier_id=supplier_id,
            priority=priority,
            ack_required=ack_required,
            idempotency_key=idempotency_key,
            created_at=now,
        )
        stored._state.adding = False
        stored._state.db = connection.alias
        _stored(stored)
        return stored


def _check_idempotency_key(key: Any) -> None:
    if key is None:
        return
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise invalid("idempotency_key", "1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")


def _replayed(
    *, user: Any, key: str, topic: str, event: str, drop_expired: bool = False
) -> Event | None:
    """The event first published with this user's key in the last 24 h, if any; with
    ``drop_expired`` an older row of the key is deleted (its key may be used again)."""
    row = IdempotencyKey.objects.filter(user=user, key=key).first()
    if row is None:
        return None
    if row.created_at < timezone.now() - IDEMPOTENCY_TTL:
        if drop_expired:
            row.delete()
        return None
    if row.topic != topic:
        raise invalid("idempotency_key", "already used for a publish on another topic")
    first = Event.objects.filter(topic=row.topic, seq=row.seq).first()
    if first is None:
        # Pruned since (a topic past its count limit within 24 h): the seq is still true.
        return Event(topic=row.topic, seq=row.seq, event=event, payload={})
    if first.event != event:
        raise invalid("idempotency_key", f"already used for a {first.event!r} publish")
    return first


def _actor_supplier_id(ctx: catalogue.PublishContext, event: str, payload: dict) -> int | None:
    acting = ctx.acting_supplier_ids
    if event == "vendor.status" and payload.get("supplier_id") in acting:
        return payload["supplier_id"]
    return min(acting) if acting else None


def _columns(
    spec: catalogue.EventSpec,
    ctx: catalogue.PublishContext,
    payload: dict[str, Any],
    idempotency_key: str | None,
) -> dict[str, Any]:
    """What a client's publish stores besides its topic and seq: the applied payload and
    the catalogue row's priority and acknowledgement, the publisher and its supplier."""
    return {
        "event": spec.name,
        "payload": payload,
        "user_id": ctx.user.pk,
        "supplier_id": _actor_supplier_id(ctx, spec.name, payload),
        "priority": spec.priority,
        "ack_required": spec.ack_required,
        "idempotency_key": idempotency_key,
    }


def event_publish(
    *,
    topic: str,
    event: str,
    payload: Any,
    user: Any,
    idempotency_key: str | None = None,
) -> PublishResult:
    """Publish a client's event on a wedding topic (PROTOCOL §4 publish, §5 catalogue).

    Called by the WebSocket consumer and the HTTP publish API. Raises ``RealtimeError``:
    ``unknown_topic``/``forbidden`` (one message for a missing and a hidden topic),
    ``invalid_payload`` naming the field, ``conflict`` with the current item.
    """
    parsed, access = publish_access(user, topic, event)
    topic_name = str(parsed)
    _check_idempotency_key(idempotency_key)
    replay = partial(_replayed, user=user, key=idempotency_key, topic=topic_name, event=event)
    # A repeated key is found under the topic's lock below (one lookup, not two): a
    # retry costs a lock, every first publish saves a round trip. In read-only mode a
    # repeat still gets its first seq (that is a read).
    if selectors.read_only_mode()["enabled"]:
        if idempotency_key is not None and (first := replay()) is not None:
            return PublishResult(first, created=False)
        writable_check()
    spec = catalogue.spec_for(event)
    data = spec.validate(payload)
    ctx = catalogue.PublishContext.known(user, parsed.id, access.acting_supplier_ids)
    if spec.stores_only and connection.vendor == "postgresql":
        row = _columns(spec, ctx, spec.apply(ctx, data), idempotency_key)
        stored = _append_one_statement(topic_name, **row)
        if stored is not None:
            return PublishResult(stored, created=True)
    try:
        with _in_order(topic_name), transaction.atomic():
            cursor = _lock_cursor(topic_name)
            if idempotency_key is not None:
                # A repeat, or a twin that committed while we waited for the lock.
                if (first := replay(drop_expired=True)) is not None:
                    return PublishResult(first, created=False)
            stored = _append(cursor, **_columns(spec, ctx, spec.apply(ctx, data), idempotency_key))
            if idempotency_key is not None:
                IdempotencyKey.objects.create(
                    user=user, key=idempotency_key, topic=topic_name, seq=stored.seq
                )
    except (IntegrityError, RealtimeError):
        # A twin publish with the same key on another topic (unique key) or one whose
        # effect now conflicts: if the twin was stored, this is its repeat.
        if idempotency_key is not None and (first := replay()) is not None:
            return PublishResult(first, created=False)
        raise
    return PublishResult(stored, created=True)


def event_publish_system(
    topic: str,
    event: str,
    payload: dict[str, Any],
    priority: str = Event.Priority.NORMAL,
    *,
    ack_required: bool = False,
) -> Event:
    """Publish a server event (alerts, scaling, ack.updated) on any topic, without a user.

    No authorisation and no catalogue: the caller is the server. The topic must parse,
    the payload must be an object orjson can encode (dates, UUIDs ... become strings).
    Joins the caller's transaction, if any.
    """
    parsed = parse_topic(topic)
    if not isinstance(event, str) or len(event) > 64 or not _EVENT_NAME_RE.fullmatch(event):
        raise invalid("event", f"not an event name: {event!r}")
    if priority not in Event.Priority.values:
        raise ValueError(f"priority must be one of {Event.Priority.values}, not {priority!r}")
    if not isinstance(payload, dict):
        raise invalid("payload", "must be a JSON object")
    try:
        # Round-trip, so that what is stored is exactly what subscribers get (a date
        # becomes its ISO string in both).
        payload = orjson.loads(orjson.dumps(payload))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise invalid("payload", "must be JSON-serialisable") from exc
    with _in_order(str(parsed)), transaction.atomic():
        cursor = _lock_cursor(str(parsed))
        return _append(
            cursor,
            event=event,
            payload=payload,
            user_id=None,
            supplier_id=None,
            priority=priority,
            ack_required=ack_required,
        )


def ack_record(*, user: Any, topic: str, seq: Any) -> AckResult:
    """Record that ``user`` saw event ``seq`` of ``topic`` (PROTOCOL §4 ack); idempotent.

    Any stored event may be acknowledged; for one marked ``ack_required`` a new
    acknowledgement also publishes ``ack.updated`` on the topic with who has acked.
    """
    parsed = authorize_subscribe(user, topic, cached=False)  # a write: checked exactly
    if parsed.kind == "wedding" and not roles.may(
        "ack",
        staff=bool(user.is_staff),
        acting=bool(wedsync_selectors.user_acting_supplier_ids(user, parsed.id)),
        editor=lambda: wedsync_selectors.user_can_edit_timeline(user, parsed.id),
    ):
        raise role_forbidden("you may not acknowledge events of this wedding")
    topic_name = str(parsed)
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise invalid("seq", "must be a positive integer")
    writable_check()
    acked_event = Event.objects.filter(topic=topic_name, seq=seq).first()
    if acked_event is None:
        raise invalid("seq", f"no event {seq} on this topic (never sent, or pruned)")
    if Ack.objects.filter(event=acked_event, user=user).exists():
        # Acknowledged already: nothing to store or publish, no lock (a repeated ack, or
        # a flood of them, holds up nobody's publish).
        return AckResult(
            event=acked_event, created=False, acked=selectors.acked_user_ids(acked_event)
        )
    # Only an ack that publishes (ack.updated, of an ack_required event) takes the topic's
    # ordering lock and its cursor row: an ack of anything else is one insert, and a
    # flood of them holds up nobody's publish.
    ordered = _in_order(topic_name) if acked_event.ack_required else nullcontext()
    with ordered, transaction.atomic():
        if acked_event.ack_required:
            # Serialise the acks of the topic, so that each ack.updated counts all the
            # acks committed before it.
            _lock_cursor(topic_name)
        try:
            with transaction.atomic():
                Ack.objects.create(event=acked_event, user=user)
            created = True
        except IntegrityError:
            created = False
        acked = selectors.acked_user_ids(acked_event)
        if created:
            transaction.on_commit(partial(metrics.acked, ack_required=acked_event.ack_required))
        update = None
        if created and acked_event.ack_required:
            update = event_publish_system(
                topic_name,
                "ack.updated",
                {
                    "seq": seq,
                    "user_id": user.pk,
                    "name": user.get_full_name() or user.get_username(),
                    "supplier_id": selectors.acting_supplier_id(user, topic_name),
                    "acked": acked,
                    "count": len(acked),
                },
            )
    return AckResult(event=acked_event, created=created, acked=acked, update=update)


def _delete_events(queryset: Any) -> int:
    deleted = 0
    while ids := list(queryset.values_list("pk", flat=True)[:PRUNE_BATCH]):
        _, per_model = Event.objects.filter(pk__in=ids).delete()
        deleted += per_model.get(Event._meta.label, 0)
    return deleted


def _kept_past_retention(topic: str) -> list[int]:
    """The seqs retention never prunes on a wedding topic: each open emergency (an
    ``emergency.raised`` without its ``emergency.resolved``) and each supplier's latest
    ``vendor.status``. A flood cannot push the state a wedding runs on out of the log."""
    if not topic.startswith("wedding:"):
        return []
    rows = Event.objects.filter(topic=topic).order_by()
    resolved = selectors.resolved_emergencies([topic])
    kept = [
        seq
        for seq, payload in rows.filter(event="emergency.raised").values_list("seq", "payload")
        if (topic, (payload or {}).get("id")) not in resolved
    ]
    kept += (
        rows.filter(event="vendor.status")
        .values(supplier=KT("payload__supplier_id"))
        .annotate(last=Max("seq"))
        .values_list("last", flat=True)
    )
    return kept


def events_prune(*, now: dt.datetime | None = None) -> int:
    """Delete events past retention (age, and count per topic) and expired idempotency keys.

    Run hourly by ``realtime.tasks.prune_event_log``. Cursors are kept, so a topic's seq
    never starts again. Open emergencies and each supplier's latest status on a wedding
    topic are kept whatever their age or number (``_kept_past_retention``; PROTOCOL §7);
    ``selectors.oldest_retained_seq`` tells replay where the whole log starts above them.
    Returns the number of events deleted.
    """
    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=settings.REALTIME_RETENTION_DAYS)
    deleted = 0
    old = Event.objects.filter(created_at__lt=cutoff)
    for topic in old.order_by().values_list("topic", flat=True).distinct():
        kept = _kept_past_retention(topic)
        deleted += _delete_events(old.filter(topic=topic).exclude(seq__in=kept))
    keep = settings.REALTIME_RETENTION_EVENTS
    for topic, last_seq in TopicCursor.objects.filter(last_seq__gt=keep).values_list(
        "topic", "last_seq"
    ):
        beyond = Event.objects.filter(topic=topic, seq__lte=last_seq - keep)
        if beyond.exists():
            kept = _kept_past_retention(topic)
            deleted += _delete_events(beyond.exclude(seq__in=kept))
    keys, _ = IdempotencyKey.objects.filter(created_at__lt=now - IDEMPOTENCY_TTL).delete()
    logger.info("event log pruned: %d events, %d idempotency keys", deleted, keys)
    return deleted
