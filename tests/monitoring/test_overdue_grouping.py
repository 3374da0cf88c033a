"""Overdue acknowledgements are alerted per wedding, not per event (docs/security.md "No
member can flood a wedding"): a flood of emergencies opens one alert and one planner e-mail."""

from __future__ import annotations

import datetime as dt

import pytest

from monitoring import services
from monitoring.models import Alert
from realtime.models import Event
from realtime.services import ack_record, event_publish
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from weddings.models import Supplier

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

T0 = dt.datetime(2026, 6, 13, 14, 0, tzinfo=dt.UTC)


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def _day() -> dict:
    planner = make_user(email="planner@example.com")
    photographer, florist = make_user(), make_user()
    wedding = make_wedding()
    planner_co = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    photo_co = make_supplier(users=(photographer,))
    florist_co = make_supplier(category=Supplier.Category.FLORIST, users=(florist,))
    for supplier in (planner_co, photo_co, florist_co):
        make_booking(supplier=supplier, wedding=wedding)
    return locals()


def _raise(day: dict, n: int, at: dt.datetime) -> list[Event]:
    raised = [
        event_publish(
            topic=day["wedding"].topic,
            event="emergency.raised",
            payload={"kind": "medical", "text": f"emergency {i}"},
            user=day["photographer"],
        ).event
        for i in range(n)
    ]
    Event.objects.filter(pk__in=[e.pk for e in raised]).update(created_at=at)
    return raised


def _planner_mails(mailoutbox) -> list:
    return [m for m in mailoutbox if m.to == ["planner@example.com"]]


def test_overdue__100_emergencies_on_one_wedding_open_one_alert_and_one_email(mailoutbox, settings):
    # given: 100 unacknowledged emergencies on one wedding (past the cap of open ones a
    # member may hold, which is not what this is about)
    settings.REALTIME_OPEN_EMERGENCIES_PER_USER = 1000
    day = _day()
    topic = day["wedding"].topic
    raised = _raise(day, 100, T0)

    # when: the overdue check runs past 5 minutes
    changes = services.acks_check(now=minutes(6))

    # then: one alert for the wedding, naming the count and the oldest event
    assert changes == {topic: "opened"}
    alert = Alert.objects.get(rule="ack_overdue", resolved_at__isnull=True)
    assert alert.subject == topic
    assert alert.message.startswith(f"100 events wait for acknowledgement on {topic}")
    assert f"emergency.raised #{raised[0].seq}" in alert.message
    # one notice on the wedding topic, one planner e-mail
    notices = Event.objects.filter(topic=topic, event="alert.ack_overdue")
    assert notices.count() == 1
    assert notices.get().payload["count"] == 100
    assert notices.get().payload["seq"] == raised[0].seq
    assert len(_planner_mails(mailoutbox)) == 1

    # when: checked again a minute later: the same alert, nothing new sent
    assert services.acks_check(now=minutes(7)) == {topic: None}
    assert Alert.objects.filter(rule="ack_overdue").count() == 1
    assert len(_planner_mails(mailoutbox)) == 1


def test_overdue__the_alert_follows_events_as_they_come_and_go(mailoutbox):
    day = _day()
    topic = day["wedding"].topic
    first, second = _raise(day, 2, T0)
    assert services.acks_check(now=minutes(6)) == {topic: "opened"}

    # when: the oldest is acknowledged by every expected supplier
    for user in (day["planner"], day["florist"]):
        ack_record(user=user, topic=topic, seq=first.seq)
    assert services.acks_check(now=minutes(7)) == {topic: None}

    # then: the same alert now counts one and names the next oldest
    alert = Alert.objects.get(rule="ack_overdue", resolved_at__isnull=True)
    assert alert.message.startswith(f"1 event waits for acknowledgement on {topic}")
    assert f"#{second.seq}," in alert.message

    # when: a new one comes and the old one goes: still the one alert
    (third,) = _raise(day, 1, minutes(2))
    for user in (day["planner"], day["florist"]):
        ack_record(user=user, topic=topic, seq=second.seq)
    assert services.acks_check(now=minutes(8)) == {topic: None}
    alert.refresh_from_db()
    assert f"#{third.seq}," in alert.message and alert.resolved_at is None

    # when: all acknowledged: resolved at once
    for user in (day["planner"], day["florist"]):
        ack_record(user=user, topic=topic, seq=third.seq)
    assert services.acks_check(now=minutes(9)) == {topic: "resolved"}
    assert len(_planner_mails(mailoutbox)) == 1


def test_overdue__two_weddings_two_alerts(mailoutbox):
    one, two = _day(), _day()
    _raise(one, 3, T0)
    _raise(two, 1, T0)

    changes = services.acks_check(now=minutes(6))

    assert changes == {one["wedding"].topic: "opened", two["wedding"].topic: "opened"}
    assert Alert.objects.filter(rule="ack_overdue").count() == 2
