"""Writes of monitoring: metric snapshots, alerts (open, escalate, acknowledge, resolve)
and their notifications.

An alert is one row per rule and subject while unresolved (a unique constraint, so two
evaluators cannot open it twice). Its life:

* **open** when a rule's value reaches a threshold: notified on the ``ops`` topic and by
  e-mail to the technical list; a warning that turns critical is notified again.
* **escalate** while nobody acknowledged it: management after
  ``ALERT_ESCALATE_MANAGEMENT_MINUTES``, executive after
  ``ALERT_ESCALATE_EXECUTIVE_MINUTES``, each notified (e-mail to that level's list).
* **acknowledge** (staff, admin or API): escalation stops; the alert stays until clear.
* **resolve** once the condition has stayed clear for ``ALERT_CLEAR_MINUTES`` (damping: a
  value flapping around its threshold keeps one alert instead of reopening it every
  minute), at once for an acknowledgement finally given, or by staff.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from realtime.models import Event
from realtime.services import event_publish_system
from scaling.selectors import wedding_day_mode

from . import figures, rules, selectors
from .models import Alert, AlertRule, MetricSnapshot

logger = logging.getLogger(__name__)

OPENED, RAISED, ESCALATED, ACKNOWLEDGED, RESOLVED = (
    "opened", "raised", "escalated", "acknowledged", "resolved",
)  # fmt: skip
_ESCALATION_ORDER = [e.value for e in Alert.Escalation]


# --- snapshots -----------------------------------------------------------------------------


def snapshot_record(*, now: dt.datetime | None = None, totals: dict[str, Any] | None = None
                    ) -> MetricSnapshot:  # fmt: skip
    """Store the deployment's figures of the minute since the previous snapshot (beat,
    every minute). ``totals`` is a reading of the metrics (read now when not given: every
    peer's /metrics with ``METRICS_PEERS``, else this host's files)."""
    now = now or timezone.now()
    totals = figures.read_deployment_totals() if totals is None else totals
    previous = selectors.latest_snapshot()
    seconds = (now - previous.taken_at).total_seconds() if previous else None
    derived = figures.derive(previous.totals if previous else None, totals, seconds)
    cache = derived["cache"]
    latency_ok = derived["latency_samples"] >= rules.MIN_DELIVERIES_FOR_LATENCY
    try:
        utilisation = selectors.supplier_utilisation()["ratio"]
    except Exception:  # the registry lives in Redis; a snapshot must not fail with it
        logger.warning("snapshot: connection registry unavailable", exc_info=True)
        utilisation = None
    snapshot = MetricSnapshot.objects.create(
        taken_at=now,
        interval_s=seconds,
        connections=int(derived["connections"]),
        subscriptions=int(derived["subscriptions"]),
        presence=int(derived["presence"]),
        outbox_depth=int(derived["outbox_depth"]),
        deliveries_per_s=derived["deliveries_per_s"],
        publishes_per_s=derived["publishes_per_s"],
        frames_per_s=derived["frames_per_s"],
        error_rate=derived["error_rate"] if derived["frames"] else None,
        latency_p50=derived["latency"]["p50"],
        latency_p95=derived["latency"]["p95"],
        latency_p99=derived["latency"]["p99"],
        cache_hit_ratio_l1=cache["l1"]["hit_ratio"],
        cache_hit_ratio_l2=cache["l2"]["hit_ratio"],
        cache_hit_ratio=cache["combined"]["hit_ratio"],
        breakers_open=derived["breakers_open"],
        supplier_utilisation=utilisation,
        server_cpu=derived["server_cpu"],
        wedding_day_mode=bool(wedding_day_mode()["enabled"]),
        totals={**totals, "_derived": {
            "frames": derived["frames"],
            "latency_samples": derived["latency_samples"],
            "cache_reads": cache["combined"]["reads"],
            "latency_ok": latency_ok,
        }},
    )  # fmt: skip
    if previous is not None and "by_peer" in previous.totals:
        # Each host's counters (METRICS_PEERS) are only compared with the next reading:
        # older rows keep the sums alone, so history does not grow with the number of pods.
        kept = {k: v for k, v in previous.totals.items() if k != "by_peer"}
        MetricSnapshot.objects.filter(pk=previous.pk).update(totals=kept)
    return snapshot


def snapshots_prune(*, now: dt.datetime | None = None) -> int:
    """Delete snapshots older than ``MONITORING_SNAPSHOT_RETENTION_DAYS`` (90)."""
    cutoff = (now or timezone.now()) - dt.timedelta(
        days=settings.MONITORING_SNAPSHOT_RETENTION_DAYS
    )
    deleted, _ = MetricSnapshot.objects.filter(taken_at__lt=cutoff).delete()
    return deleted


def live_publish(*, path: Path | None = None) -> Event:
    """Send the host's figures now as ``metrics.live`` on ``ops`` (the live dashboard);
    ``path``: another metrics directory than this process's (tests)."""
    live = selectors.live_figures(path=path)
    payload = {
        **selectors.live_point(live),
        "wedding_day_mode": bool(wedding_day_mode()["enabled"]),
        "alerts_open": Alert.objects.filter(resolved_at__isnull=True).count(),
    }
    return event_publish_system("ops", "metrics.live", payload)


# --- rules and alerts ----------------------------------------------------------------------


def alert_rules_ensure() -> None:
    """Create the AlertRule rows that are missing, from the settings' thresholds."""
    existing = set(AlertRule.objects.values_list("key", flat=True))
    defaults = settings.MONITORING_ALERT_RULES
    missing = [
        AlertRule(key=key, warning=defaults[key]["warning"], critical=defaults[key]["critical"])
        for key in rules.RULES
        if key not in existing
    ]
    if missing:
        AlertRule.objects.bulk_create(missing, ignore_conflicts=True)


def alert_observe(
    rule: str,
    value: float | None,
    *,
    subject: str = "",
    message: str = "",
    now: dt.datetime | None = None,
    thresholds: dict[str, dict[str, Any]] | None = None,
) -> tuple[Alert | None, str | None]:
    """Feed one evaluation of ``rule`` (for ``subject``) with its ``value`` (None: no data,
    counts as clear). Returns the unresolved-or-just-resolved alert and what changed:
    'opened', 'raised' (warning -> critical), 'resolved' or None. Notifies on a change."""
    now = now or timezone.now()
    spec = rules.RULES[rule]
    limits = (thresholds or selectors.alert_thresholds())[rule]
    breach = None
    if limits["enabled"]:
        breach = rules.level(
            value, warning=limits["warning"], critical=limits["critical"], direction=spec.direction
        )
    with transaction.atomic():
        alert = (
            Alert.objects.select_for_update()
            .filter(rule=rule, subject=subject, resolved_at__isnull=True)
            .first()
        )
        if breach is None:
            return alert, _clear(alert, spec, now) if alert is not None else None
        if alert is None:
            return _open(rule, subject, breach, value, message, now)
        change = None
        if breach == Alert.Severity.CRITICAL and alert.severity == Alert.Severity.WARNING:
            alert.severity, change = breach, RAISED  # the highest level seen is kept
        alert.value, alert.message = value, message or alert.message
        alert.last_breach_at, alert.clear_since = now, None
        alert.save()
        if change:
            _notify(alert, change, emails=settings.ALERT_EMAILS["technical"])
        return alert, change


def _open(rule: str, subject: str, severity: str, value: float | None, message: str,
          now: dt.datetime) -> tuple[Alert | None, str | None]:  # fmt: skip
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                rule=rule, subject=subject, severity=severity, value=value,
                message=message or f"{rules.RULES[rule].title}: {value}",
                opened_at=now, last_breach_at=now,
            )  # fmt: skip
    except IntegrityError:  # another evaluator opened it a moment ago: theirs stands
        theirs = Alert.objects.filter(rule=rule, subject=subject, resolved_at__isnull=True)
        return theirs.first(), None
    _notify(alert, OPENED, emails=settings.ALERT_EMAILS["technical"])
    return alert, OPENED


def _clear(alert: Alert, spec: rules.RuleSpec, now: dt.datetime) -> str | None:
    if alert.clear_since is None:
        alert.clear_since = now
    quiet = dt.timedelta(minutes=settings.ALERT_CLEAR_MINUTES)
    if spec.resolve_at_once or now - alert.clear_since >= quiet:
        alert.resolved_at = now
        alert.save()
        _notify(alert, RESOLVED, emails=[])
        return RESOLVED
    alert.save(update_fields=["clear_since"])
    return None


def alerts_evaluate(*, snapshot: MetricSnapshot, beat_gap_s: float | None,
                    now: dt.datetime | None = None) -> dict[str, str | None]:  # fmt: skip
    """Evaluate the system-wide rules against a snapshot (every minute, after it is
    stored); ``beat_gap_s``: seconds since the snapshot before it. Returns the changes."""
    now = now or timezone.now()
    alert_rules_ensure()
    thresholds = selectors.alert_thresholds()
    derived = snapshot.totals.get("_derived", {})
    latency = snapshot.latency_p95 if derived.get("latency_ok") else None
    errors = (
        snapshot.error_rate if derived.get("frames", 0) >= rules.MIN_FRAMES_FOR_ERROR_RATE else None
    )
    hits = (
        snapshot.cache_hit_ratio
        if derived.get("cache_reads", 0) >= rules.MIN_READS_FOR_HIT_RATIO
        else None
    )
    values = {
        "delivery_latency_p95": (latency, f"delivery latency p95 {_fmt(latency, 's')}"),
        "error_rate": (errors, f"error rate {_fmt(errors, '%')} of frames"),
        "connection_utilisation": (
            snapshot.supplier_utilisation,
            f"busiest supplier at {_fmt(snapshot.supplier_utilisation, '%')} of its limit",
        ),
        "cache_hit_ratio": (hits, f"cache hit ratio {_fmt(hits, '%')}"),
        "circuit_breaker_open": (
            float(snapshot.breakers_open),
            f"{snapshot.breakers_open} Redis circuit breaker(s) open",
        ),
        "celery_beat_late": (beat_gap_s, f"the minute task ran {_fmt(beat_gap_s, 's')} apart"),
    }
    changes = {}
    for rule, (value, message) in values.items():
        _, change = alert_observe(rule, value, message=message, now=now, thresholds=thresholds)
        changes[rule] = change
    return changes


def beat_check(*, now: dt.datetime | None = None) -> str | None:
    """Check from outside Celery that the minute task runs (the metrics API calls this:
    when beat is down, nothing inside Celery notices). Opens or raises, never resolves:
    the minute task resolves it once it runs again."""
    now = now or timezone.now()
    latest = selectors.latest_snapshot()
    if latest is None:
        return None  # never ran: a fresh install, not an outage
    gap = (now - latest.taken_at).total_seconds()
    thresholds = selectors.alert_thresholds()
    limits = thresholds["celery_beat_late"]
    if not limits["enabled"] or gap < limits["warning"]:
        return None
    _, change = alert_observe(
        "celery_beat_late", gap, message=f"no metric snapshot for {_fmt(gap, 's')}",
        now=now, thresholds=thresholds,
    )  # fmt: skip
    return change


def acks_check(*, now: dt.datetime | None = None) -> dict[str, str | None]:
    """Chase ``ack_required`` events nobody (of a supplier expected to) acknowledged: one
    alert per wedding (subject: its topic; the message counts the waiting events and names
    the oldest, kept up to date as events come and go), notifying the wedding's planner on
    its topic and staff on ``ops`` when it opens or turns critical; resolved as soon as
    every expected supplier acknowledged every one of them."""
    now = now or timezone.now()
    alert_rules_ensure()
    thresholds = selectors.alert_thresholds()
    limits = thresholds["ack_overdue"]
    groups = (
        selectors.overdue_acks_by_wedding(now=now, minutes=limits["warning"])
        if limits["enabled"]
        else []
    )
    changes: dict[str, str | None] = {}
    for group in groups:
        alert, change = alert_observe(
            "ack_overdue", group["minutes"], subject=group["subject"],
            message=_overdue_message(group), now=now, thresholds=thresholds,
        )  # fmt: skip
        changes[group["subject"]] = change
        if change in (OPENED, RAISED) and alert is not None:
            _notify_planner(alert, group)
    chased = {group["subject"] for group in groups}
    for alert in Alert.objects.filter(rule="ack_overdue", resolved_at__isnull=True).exclude(
        subject__in=chased
    ):
        _, change = alert_observe(
            "ack_overdue", None, subject=alert.subject, now=now, thresholds=thresholds
        )
        changes[alert.subject] = change
    return changes


def _overdue_message(group: dict[str, Any]) -> str:
    """The alert's message, e.g. '3 events wait for acknowledgement on wedding:7; the
    oldest, emergency.raised #12, for 9 min, for: Bloom & Co'."""
    oldest = group["oldest"]
    event = oldest["event"]
    names = ", ".join(m["name"] for m in oldest["missing"])
    count = group["count"]
    return (
        f"{count} {'events wait' if count != 1 else 'event waits'} for acknowledgement on "
        f"{event.topic}; "
        f"the oldest, {event.event} #{event.seq}, for {oldest['minutes']:.0f} min, for: {names}"
    )[:500]


# At most this many seqs of waiting events in a planner notice (the count says how many).
NOTICE_MAX_SEQS = 50


def _notify_planner(alert: Alert, group: dict[str, Any]) -> None:
    oldest = group["oldest"]
    event = oldest["event"]
    payload = {
        "alert_id": alert.pk,
        "seq": event.seq,  # the oldest waiting event
        "event": event.event,
        "minutes": round(oldest["minutes"]),
        "missing": oldest["missing"],
        "planner_supplier_ids": group["planner_supplier_ids"],
        "severity": alert.severity,
        "count": group["count"],
        "seqs": [item["event"].seq for item in group["items"][:NOTICE_MAX_SEQS]],
    }
    priority = Event.Priority.CRITICAL if alert.severity == "critical" else Event.Priority.NORMAL
    event_publish_system(event.topic, "alert.ack_overdue", payload, priority)
    emails = selectors.planner_emails(group["planner_supplier_ids"])
    if emails:
        subject = f"[WedSync] acknowledgement overdue on {event.topic}"
        transaction.on_commit(partial(_send, subject, alert.message, emails))


def alerts_escalate(*, now: dt.datetime | None = None) -> list[Alert]:
    """Move unacknowledged alerts up a level once they have been open long enough."""
    now = now or timezone.now()
    after = {
        Alert.Escalation.MANAGEMENT: settings.ALERT_ESCALATE_MANAGEMENT_MINUTES,
        Alert.Escalation.EXECUTIVE: settings.ALERT_ESCALATE_EXECUTIVE_MINUTES,
    }
    escalated = []
    pending = Alert.objects.filter(resolved_at__isnull=True, acknowledged_at__isnull=True)
    for candidate in pending.exclude(escalation=Alert.Escalation.EXECUTIVE):
        with transaction.atomic():
            alert = Alert.objects.select_for_update().get(pk=candidate.pk)
            if alert.resolved_at or alert.acknowledged_at:
                continue
            age = now - alert.opened_at
            target = alert.escalation
            for level, minutes in after.items():
                if age >= dt.timedelta(minutes=minutes):
                    target = max(target, level, key=_ESCALATION_ORDER.index)
            if target == alert.escalation:
                continue
            alert.escalation, alert.escalated_at = target, now
            alert.save(update_fields=["escalation", "escalated_at"])
            _notify(alert, ESCALATED, emails=settings.ALERT_EMAILS[target])
            escalated.append(alert)
    return escalated


def alert_acknowledge(*, alert_id: int, user: Any) -> Alert:
    """Staff take an alert on: escalation stops (idempotent). Raises
    ``Alert.DoesNotExist`` for an unknown id."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert_id)
        if alert.acknowledged_at is None and alert.resolved_at is None:
            alert.acknowledged_at = timezone.now()
            alert.acknowledged_by = user if getattr(user, "pk", None) else None
            alert.save(update_fields=["acknowledged_at", "acknowledged_by"])
            _notify(alert, ACKNOWLEDGED, emails=[])
    return alert


def alert_resolve(*, alert_id: int, user: Any) -> Alert:
    """Staff close an alert by hand (idempotent); a condition still present opens a new
    one at the next evaluation."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().get(pk=alert_id)
        if alert.resolved_at is None:
            alert.resolved_at = timezone.now()
            alert.resolved_by = user if getattr(user, "pk", None) else None
            alert.save(update_fields=["resolved_at", "resolved_by"])
            _notify(alert, RESOLVED, emails=[])
    return alert


# --- notifications -------------------------------------------------------------------------


def _notify(alert: Alert, kind: str, *, emails: list[str]) -> None:
    """``alert.<kind>`` on ``ops`` (in the caller's transaction), and an e-mail after commit."""
    payload = selectors.alert_as_dict(alert)
    urgent = alert.severity == Alert.Severity.CRITICAL and kind in (OPENED, RAISED, ESCALATED)
    priority = Event.Priority.CRITICAL if urgent else Event.Priority.NORMAL
    event_publish_system("ops", f"alert.{kind}", payload, priority)
    if emails:
        subject = f"[WedSync {alert.severity}] {payload['title']} {kind} ({alert.escalation})"
        body = (
            f"{alert.message}\n\nOpened {payload['opened_at']}; escalation level "
            f"{alert.escalation}.\nAcknowledge it in the admin dashboard "
            "(/admin/monitoring/dashboard/) to stop the escalation."
        )
        transaction.on_commit(partial(_send, subject, body, list(emails)))


def _send(subject: str, body: str, recipients: list[str]) -> None:
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception:  # a mail server down must not stop the alerting (ops still has it)
        logger.exception("alert e-mail to %s failed", ", ".join(recipients))


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value * 100:.1f} %"
    return f"{value:.2f} {unit}".rstrip()


def scaling_decision_applied(
    sender: Any, *, failures_in_a_row: int, message: str, **kwargs: Any
) -> None:
    """Scaling's ``decision_applied``: feed the rule ``scaling_actuator_failed``."""
    alert_observe("scaling_actuator_failed", failures_in_a_row, message=message)
