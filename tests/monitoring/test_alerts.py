"""Alert rules: open, raise, damp, resolve, escalate; overdue acknowledgements; snapshots.

Time is the ``now`` each service takes; notifications are real rows on the ``ops`` (and
wedding) topic and real e-mails through Django's (test) mail backend.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from monitoring import rules, services
from monitoring.models import Alert, AlertRule, MetricSnapshot
from monitoring.tasks import record_snapshot
from realtime.models import Event, TopicCursor
from realtime.services import ack_record, event_publish
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from weddings.models import Supplier

pytestmark = pytest.mark.django_db(transaction=True)

T0 = dt.datetime(2026, 6, 13, 14, 0, tzinfo=dt.UTC)
EMAILS = {"technical": ["oncall@example.com"], "management": ["ops-lead@example.com"],
          "executive": ["cto@example.com"]}  # fmt: skip


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def ops_events(name: str) -> list[Event]:
    return list(Event.objects.filter(topic="ops", event=name).order_by("seq"))


def latency(value: float | None, at: dt.datetime) -> tuple[Alert | None, str | None]:
    return services.alert_observe("delivery_latency_p95", value, message=f"p95 {value}", now=at)


# --- the pure decision ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "direction", "expected"),
    [
        (0.4, "above", None),
        (0.5, "above", "warning"),
        (2.0, "above", "critical"),
        (None, "above", None),
        (0.9, "below", None),
        (0.8, "below", "warning"),
        (0.3, "below", "critical"),
    ],
)
def test_level__thresholds_in_either_direction(value, direction, expected) -> None:
    warning, critical = (0.5, 2.0) if direction == "above" else (0.8, 0.5)

    assert rules.level(value, warning=warning, critical=critical, direction=direction) == expected


# --- open, raise, damp, resolve ------------------------------------------------------------


@override_settings(ALERT_EMAILS=EMAILS, ALERT_CLEAR_MINUTES=5)
def test_alert__opens_once_notifies_ops_and_email_then_raises_to_critical(mailoutbox) -> None:
    # when: latency over the warning threshold twice, then over the critical one
    alert, change = latency(0.8, minutes(0))
    again, change_again = latency(0.9, minutes(1))
    raised, change_raised = latency(3.0, minutes(2))

    # then: one alert, opened then raised; each notified on ops and by e-mail
    assert change == "opened" and change_again is None and change_raised == "raised"
    assert alert.pk == again.pk == raised.pk
    assert Alert.objects.get().severity == "critical"
    assert [e.payload["id"] for e in ops_events("alert.opened")] == [alert.pk]
    assert ops_events("alert.raised")[0].priority == "critical"
    assert [m.to for m in mailoutbox] == [["oncall@example.com"], ["oncall@example.com"]]
    assert "Delivery latency p95" in mailoutbox[0].subject


@override_settings(ALERT_CLEAR_MINUTES=5)
def test_alert__flapping_value_keeps_one_alert_and_resolves_after_a_quiet_spell() -> None:
    # given: a value that crosses the threshold every minute for ten minutes
    for minute in range(10):
        latency(0.8 if minute % 2 == 0 else 0.1, minutes(minute))

    # then: still the one alert, opened once and never resolved in between
    assert Alert.objects.count() == 1
    assert len(ops_events("alert.opened")) == 1
    assert not ops_events("alert.resolved")

    # when: it stays clear (from minute 9) for less, then for the whole quiet spell
    latency(0.1, minutes(13))
    assert Alert.objects.get().resolved_at is None
    _, change = latency(0.1, minutes(14))

    # then
    assert change == "resolved"
    assert Alert.objects.get().resolved_at == minutes(14)
    assert len(ops_events("alert.resolved")) == 1

    # and a new breach afterwards is a new alert
    _, change = latency(0.8, minutes(15))
    assert change == "opened" and Alert.objects.count() == 2


def test_alert__thresholds_edited_in_admin_rows_win_over_settings() -> None:
    services.alert_rules_ensure()
    AlertRule.objects.filter(key="delivery_latency_p95").update(warning=1.0)

    _, change = latency(0.8, minutes(0))
    assert change is None
    AlertRule.objects.filter(key="delivery_latency_p95").update(enabled=False)
    _, change = latency(5.0, minutes(1))
    assert change is None and not Alert.objects.exists()


# --- escalation ----------------------------------------------------------------------------


@override_settings(
    ALERT_EMAILS=EMAILS, ALERT_ESCALATE_MANAGEMENT_MINUTES=15, ALERT_ESCALATE_EXECUTIVE_MINUTES=45
)
def test_escalation__technical_then_management_then_executive_while_unacknowledged(
    mailoutbox,
) -> None:
    latency(3.0, minutes(0))
    mailoutbox.clear()

    assert services.alerts_escalate(now=minutes(14)) == []
    assert [a.escalation for a in services.alerts_escalate(now=minutes(15))] == ["management"]
    assert services.alerts_escalate(now=minutes(30)) == []
    assert [a.escalation for a in services.alerts_escalate(now=minutes(45))] == ["executive"]

    assert [m.to for m in mailoutbox] == [["ops-lead@example.com"], ["cto@example.com"]]
    escalations = ops_events("alert.escalated")
    assert [e.payload["escalation"] for e in escalations] == ["management", "executive"]
    assert all(e.priority == "critical" for e in escalations)


def test_escalation__acknowledged_alert_stays_where_it_is() -> None:
    staff = make_user(is_staff=True)
    alert, _ = latency(0.8, minutes(0))

    services.alert_acknowledge(alert_id=alert.pk, user=staff)
    services.alert_acknowledge(alert_id=alert.pk, user=staff)  # idempotent

    assert services.alerts_escalate(now=minutes(120)) == []
    alert.refresh_from_db()
    assert alert.status == "acknowledged" and alert.acknowledged_by == staff
    assert alert.escalation == "technical"
    assert len(ops_events("alert.acknowledged")) == 1


# --- unacknowledged ack_required events ---------------------------------------------------


def _wedding_with_planner() -> dict[str, Any]:
    planner = make_user(email="planner@example.com")
    photographer = make_user()
    florist = make_user()
    wedding = make_wedding()
    planner_co = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    photo_co = make_supplier(users=(photographer,))
    florist_co = make_supplier(category=Supplier.Category.FLORIST, users=(florist,))
    for supplier in (planner_co, photo_co, florist_co):
        make_booking(supplier=supplier, wedding=wedding)
    return locals()


def test_ack_overdue__after_5_min_planner_on_the_wedding_topic_and_staff_on_ops(
    mailoutbox,
) -> None:
    # given: the photographer raises an emergency at T0; the florist acknowledges it
    day = _wedding_with_planner()
    wedding = day["wedding"]
    raised = event_publish(
        topic=wedding.topic,
        event="emergency.raised",
        payload={"kind": "weather", "text": "storm at the venue"},
        user=day["photographer"],
    ).event
    Event.objects.filter(pk=raised.pk).update(created_at=T0)
    ack_record(user=day["florist"], topic=wedding.topic, seq=raised.seq)

    # when: checked at 4 and at 6 minutes
    assert services.acks_check(now=minutes(4)) == {}
    changes = services.acks_check(now=minutes(6))

    # then: one alert for the wedding; the planner's supplier named on the wedding topic
    subject = wedding.topic
    assert changes == {subject: "opened"}
    notice = Event.objects.get(topic=wedding.topic, event="alert.ack_overdue")
    assert notice.payload["planner_supplier_ids"] == [day["planner_co"].pk]
    assert [m["id"] for m in notice.payload["missing"]] == [day["planner_co"].pk]
    assert ops_events("alert.opened")[0].payload["subject"] == subject
    assert ["planner@example.com"] in [m.to for m in mailoutbox]

    # when: still unacknowledged at 15 minutes it turns critical, notified again
    assert services.acks_check(now=minutes(15)) == {subject: "raised"}
    notices = Event.objects.filter(topic=wedding.topic, event="alert.ack_overdue")
    assert [n.priority for n in notices.order_by("seq")] == ["normal", "critical"]

    # when: the planner acknowledges, the alert resolves at the next check
    ack_record(user=day["planner"], topic=wedding.topic, seq=raised.seq)
    assert services.acks_check(now=minutes(16)) == {subject: "resolved"}
    assert not Alert.objects.filter(resolved_at__isnull=True).exists()


def test_ack_overdue__shift_needs_only_the_suppliers_whose_items_moved() -> None:
    day = _wedding_with_planner()
    wedding = day["wedding"]
    TopicCursor.objects.create(topic=wedding.topic, last_seq=1)  # as the log would hold it
    stored = Event.objects.create(
        topic=wedding.topic, seq=1, event="timeline.shifted", ack_required=True,
        payload={"from_item_id": 1, "minutes": 20, "items": [],
                 "ack_suppliers": [day["photo_co"].pk]},
        created_at=T0,
    )  # fmt: skip

    assert services.acks_check(now=minutes(6)) == {wedding.topic: "opened"}
    ack_record(user=day["photographer"], topic=wedding.topic, seq=stored.seq)
    assert services.acks_check(now=minutes(7)) == {wedding.topic: "resolved"}


# --- snapshots -----------------------------------------------------------------------------


def _reading(deliveries: int, slow: int, fast: int) -> dict[str, Any]:
    return {
        "connections": 40, "subscriptions": 80, "presence": 80, "outbox_depth": 3,
        "outbox_depth_max": 2, "deliveries": deliveries, "frames": 0, "errors": 0,
        "publishes": 0, "connects": 0,
        "latency": {"buckets": {"0.1": fast, "5.0": fast + slow, "+Inf": fast + slow}},
        "cache": {"l1": {"hits": 0, "misses": 0}, "l2": {"hits": 0, "misses": 0}},
        "breakers": {"presence": 2},
    }  # fmt: skip


def test_snapshot__derives_the_minute_and_opens_latency_and_breaker_alerts() -> None:
    # given: a first reading, and a minute later one where most deliveries were slow
    services.snapshot_record(now=minutes(0), totals=_reading(0, 0, 0))
    snapshot = services.snapshot_record(now=minutes(1), totals=_reading(600, 500, 100))

    # when
    changes = services.alerts_evaluate(snapshot=snapshot, beat_gap_s=60, now=minutes(1))

    # then
    assert snapshot.deliveries_per_s == pytest.approx(10.0)
    assert snapshot.latency_p95 > 2.0
    assert snapshot.connections == 40 and snapshot.breakers_open == 1
    assert changes["delivery_latency_p95"] == "opened"
    assert changes["circuit_breaker_open"] == "opened"
    assert changes["celery_beat_late"] is None and changes["error_rate"] is None
    assert Alert.objects.get(rule="delivery_latency_p95").severity == "critical"


def test_snapshot__beat_late_from_the_gap_and_from_the_api_check() -> None:
    services.snapshot_record(now=minutes(0), totals=_reading(0, 0, 0))

    assert services.beat_check(now=minutes(2)) is None
    assert services.beat_check(now=minutes(4)) == "opened"  # 240 s >= 180 s
    assert services.beat_check(now=minutes(11)) == "raised"  # 660 s >= 600 s


def test_snapshot__pruned_after_90_days_by_the_minute_task() -> None:
    old = MetricSnapshot.objects.create(taken_at=timezone.now() - dt.timedelta(days=91))
    kept = MetricSnapshot.objects.create(taken_at=timezone.now() - dt.timedelta(days=89))

    result = record_snapshot()

    assert result["pruned"] == 1
    assert not MetricSnapshot.objects.filter(pk=old.pk).exists()
    assert MetricSnapshot.objects.filter(pk=kept.pk).exists()
    assert MetricSnapshot.objects.count() == 2  # the kept one and this minute's
    assert set(AlertRule.objects.values_list("key", flat=True)) == set(rules.RULES)
