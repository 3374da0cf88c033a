"""What ``hostile-member`` reads and runs on the database: the wedding's real history before
and after the flood, what the flooder got stored, and the chores a deployment runs on a
timer (the overdue-acknowledgement check, retention) run at the end of the flood.

"Real history" is every stored event of the wedding's topic not published by the flooder:
the planner's and the other members' events and the server's own (``ack.updated``,
``alert.ack_overdue``); among them the open emergencies and each supplier's latest status,
which retention must never prune (``realtime.services.events_prune``).

Called from a thread of the coordinator's event loop (the ORM is synchronous); each entry
point closes its database connection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from django.core import mail
from django.db import close_old_connections, connection
from django.db.models import Count, Max, Q
from django.test.utils import override_settings
from django.utils import timezone

from monitoring.models import Alert
from monitoring.services import acks_check
from realtime.models import Ack, Event
from realtime.selectors import resolved_emergencies
from realtime.services import events_prune
from weddings.models import TimelineItem

# The overdue check runs at these simulated minutes after the flood: past the rule's
# warning (5 min) and its critical level (15 min), as the minute task would see them.
OVERDUE_CHECK_MINUTES = (6, 11, 16, 21)
# Planner e-mails of the simulated check are caught, not sent.
_LOCMEM_EMAIL = "django.core.mail.backends.locmem.EmailBackend"

P = ParamSpec("P")
R = TypeVar("R")


def _closing(func: Callable[P, R]) -> Callable[P, R]:
    """Close this thread's database connection after ``func`` (a coordinator thread)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()
            connection.close()

    return wrapper


@dataclass(frozen=True)
class Timeline:
    """The items the planner's traffic touches: a pinned item (updated, never shifted) and
    the first unpinned item (shifts start there and move the rest)."""

    pinned_id: int
    pinned_version: int
    shift_from_id: int


@_closing
def timeline_targets(wedding_id: int) -> Timeline:
    items = TimelineItem.objects.filter(wedding_id=wedding_id).order_by("starts_at", "id")
    pinned = items.filter(pinned=True).values_list("id", "version").first()
    first = items.filter(pinned=False).values_list("id", flat=True).first()
    if pinned is None or first is None:
        raise RuntimeError(f"wedding {wedding_id} has no pinned and unpinned timeline items")
    return Timeline(pinned_id=pinned[0], pinned_version=pinned[1], shift_from_id=first)


@dataclass(frozen=True)
class History:
    """A wedding topic's stored events as the checks see them."""

    seq: int  # the highest stored seq (0 without events)
    real: dict[int, str]  # seq -> event name, of every event not by the flooder
    open_emergencies: tuple[int, ...]  # seqs of emergency.raised not resolved
    latest_status: dict[int, int]  # supplier id -> seq of its latest vendor.status
    by_kind: dict[str, int]  # event name -> stored events, everyone's

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "real_events": len(self.real),
            "open_emergencies": len(self.open_emergencies),
            "suppliers_with_a_status": len(self.latest_status),
            "stored_by_kind": self.by_kind,
        }


def _history(topic: str, flooder_user_id: int) -> History:
    rows = Event.objects.filter(topic=topic).order_by()
    real = dict(
        rows.exclude(actor_user_id=flooder_user_id).values_list("seq", "event").order_by("seq")
    )
    resolved = resolved_emergencies([topic])
    open_emergencies = tuple(
        seq
        for seq, payload in rows.filter(event="emergency.raised")
        .order_by("seq")
        .values_list("seq", "payload")
        if (topic, (payload or {}).get("id")) not in resolved
    )
    latest: dict[int, int] = {}
    for seq, payload in rows.filter(event="vendor.status").values_list("seq", "payload"):
        supplier = (payload or {}).get("supplier_id")
        if supplier is not None and seq > latest.get(supplier, 0):
            latest[supplier] = seq
    by_kind = dict(rows.values_list("event").annotate(n=Count("id")).order_by("event"))
    top = rows.aggregate(top=Max("seq"))["top"] or 0
    return History(top, real, open_emergencies, latest, by_kind)


@_closing
def history(topic: str, flooder_user_id: int) -> History:
    """The topic's history now (before the flood, or after it)."""
    return _history(topic, flooder_user_id)


def compare(before: History, after: History) -> dict[str, Any]:
    """What of ``before``'s real history ``after`` no longer has: every real event, each
    open emergency and each supplier's latest status must still be stored."""
    stored = set(after.real) | set(after.open_emergencies)
    missing = sorted(seq for seq in before.real if seq not in after.real)
    emergencies = [seq for seq in before.open_emergencies if seq not in stored]
    statuses = {
        supplier: seq
        for supplier, seq in before.latest_status.items()
        if after.latest_status.get(supplier, 0) < seq
    }
    return {
        "real_events_before": len(before.real),
        "real_events_after": len(after.real),
        "missing": len(missing),
        "missing_seqs": missing[:20],
        "missing_by_kind": _by_kind(before, missing),
        "open_emergencies_before": len(before.open_emergencies),
        "open_emergencies_missing": len(emergencies),
        "latest_statuses_before": len(before.latest_status),
        "latest_statuses_missing": len(statuses),
        "intact": not (missing or emergencies or statuses),
    }


def _by_kind(history: History, seqs: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for seq in seqs:
        name = history.real.get(seq, "?")
        counts[name] = counts.get(name, 0) + 1
    return counts


@_closing
def flooder_stored(topic: str, flooder_user_id: int, after_seq: int) -> dict[str, Any]:
    """What the flooder got stored on the topic after ``after_seq``: its events per kind,
    the ``ack.updated`` events its acks published and its acknowledgements."""
    rows = Event.objects.filter(topic=topic, seq__gt=after_seq)
    events = dict(
        rows.filter(actor_user_id=flooder_user_id)
        .values_list("event")
        .annotate(n=Count("id"))
        .order_by("event")
    )
    ack_updates = rows.filter(event="ack.updated", payload__user_id=flooder_user_id).count()
    acks = Ack.objects.filter(user_id=flooder_user_id, event__topic=topic).count()
    return {"events": events, "ack_updated_events": ack_updates, "acks": acks}


@_closing
def planner_stored(topic: str, planner_user_id: int, after_seq: int) -> dict[str, int]:
    """The planner's events stored after ``after_seq``, per kind."""
    return dict(
        Event.objects.filter(topic=topic, seq__gt=after_seq, actor_user_id=planner_user_id)
        .values_list("event")
        .annotate(n=Count("id"))
        .order_by("event")
    )


@_closing
def overdue_check(topic: str, minutes: tuple[int, ...] = OVERDUE_CHECK_MINUTES) -> dict[str, Any]:
    """Run the overdue-acknowledgement check (``monitoring.services.acks_check``, what the
    minute task runs) as it would run ``minutes`` after now, and count what it opened for
    this wedding: alerts, planner notices on the topic and planner e-mails (caught, not
    sent). The check covers every wedding of the database: a scratch database only."""
    base = timezone.now()
    last_seq = Event.objects.filter(topic=topic).aggregate(top=Max("seq"))["top"] or 0
    with override_settings(EMAIL_BACKEND=_LOCMEM_EMAIL):
        if not hasattr(mail, "outbox"):
            mail.outbox = []
        sent_before = len(mail.outbox)
        changes = [acks_check(now=base + dt.timedelta(minutes=m)).get(topic) for m in minutes]
        emails = [m for m in mail.outbox[sent_before:] if topic in m.subject]
    alerts = Alert.objects.filter(rule="ack_overdue").filter(
        Q(subject=topic) | Q(subject__startswith=f"{topic}#")
    )
    latest = alerts.order_by("-opened_at", "-id").first()
    return {
        "simulated_minutes": list(minutes),
        "changes": changes,
        "alerts_opened": alerts.count(),
        "alerts_open": alerts.filter(resolved_at__isnull=True).count(),
        "severity": latest.severity if latest else None,
        "message": latest.message if latest else None,
        "planner_notices": Event.objects.filter(
            topic=topic, seq__gt=last_seq, event="alert.ack_overdue"
        ).count(),
        "planner_emails": len(emails),
    }


@_closing
def prune(topic: str, flooder_user_id: int, before: History,
          retention_events: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Run retention (``realtime.services.events_prune``, the hourly task) now, with the
    deployment's settings or, given ``retention_events``, as if REALTIME_RETENTION_EVENTS
    were that; then what of ``before``'s real history is gone. It prunes every topic of
    the database: a scratch database only."""
    stored = Event.objects.filter(topic=topic)
    count = stored.count()
    if retention_events is None:
        deleted = events_prune()
    else:
        with override_settings(REALTIME_RETENTION_EVENTS=retention_events):
            deleted = events_prune()
    after = _history(topic, flooder_user_id)
    return {
        "retention_events": retention_events,
        "deleted_in_database": deleted,
        "deleted_on_topic": count - stored.count(),
        "flooder_events_left": stored.filter(actor_user_id=flooder_user_id).count(),
        "history": compare(before, after),
    }
