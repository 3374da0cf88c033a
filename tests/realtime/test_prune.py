"""Retention of the event log: pruning by age and count, and what replay reports after it."""

from __future__ import annotations

import datetime as dt

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from realtime import selectors, services
from realtime.models import Ack, Event, IdempotencyKey, TopicCursor
from realtime.services import ack_record, event_publish, event_publish_system, events_prune
from realtime.tasks import prune_event_log
from tests.realtime.test_topics import make_world

TOPIC = "wedding:1"
OTHER = "wedding:2"


def _events(topic: str, count: int) -> list[Event]:
    return [event_publish_system(topic, "test.event", {"n": n}) for n in range(count)]


def _seqs(topic: str) -> list[int]:
    return list(Event.objects.filter(topic=topic).order_by("seq").values_list("seq", flat=True))


def _age(topic: str, seqs: list[int], by: dt.timedelta) -> None:
    Event.objects.filter(topic=topic, seq__in=seqs).update(created_at=timezone.now() - by)


# --- by age ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_prune__deletes_events_older_than_the_retention_days():
    # given
    _events(TOPIC, 4)
    _age(TOPIC, [1, 2], dt.timedelta(days=7, minutes=1))
    _age(TOPIC, [3], dt.timedelta(days=6, hours=23))

    # when
    deleted = events_prune()

    # then
    assert deleted == 2
    assert _seqs(TOPIC) == [3, 4]
    assert selectors.oldest_retained_seq(TOPIC) == 3


@pytest.mark.django_db
def test_prune__retention_days_come_from_settings(settings):
    settings.REALTIME_RETENTION_DAYS = 1
    _events(TOPIC, 2)
    _age(TOPIC, [1], dt.timedelta(days=1, minutes=1))

    assert events_prune() == 1
    assert _seqs(TOPIC) == [2]


@pytest.mark.django_db
def test_prune__now_argument_sets_the_clock():
    _events(TOPIC, 2)
    later = timezone.now() + dt.timedelta(days=8)

    assert events_prune(now=timezone.now()) == 0
    assert events_prune(now=later) == 2
    assert _seqs(TOPIC) == []


@pytest.mark.django_db
def test_prune__keeps_the_topic_seq_when_everything_is_pruned():
    # given: a topic whose every event is past retention
    _events(TOPIC, 3)
    _age(TOPIC, [1, 2, 3], dt.timedelta(days=30))

    # when
    events_prune()

    # then: the seq goes on from 3, never from 1 again
    assert _seqs(TOPIC) == []
    assert selectors.topic_seq(TOPIC) == 3
    assert selectors.oldest_retained_seq(TOPIC) == 4
    assert event_publish_system(TOPIC, "test.event", {}).seq == 4
    assert TopicCursor.objects.get(topic=TOPIC).last_seq == 4


# --- by count -------------------------------------------------------------------------


@pytest.mark.django_db
def test_prune__keeps_only_the_last_events_of_each_topic(settings):
    # given
    settings.REALTIME_RETENTION_EVENTS = 5
    _events(TOPIC, 8)
    _events(OTHER, 5)

    # when
    deleted = events_prune()

    # then
    assert deleted == 3
    assert _seqs(TOPIC) == [4, 5, 6, 7, 8]
    assert _seqs(OTHER) == [1, 2, 3, 4, 5]
    assert event_publish_system(TOPIC, "test.event", {}).seq == 9


@pytest.mark.django_db
def test_prune__default_count_limit_is_ten_thousand():
    assert django_settings.REALTIME_RETENTION_EVENTS == 10_000
    assert django_settings.REALTIME_RETENTION_DAYS == 7


@pytest.mark.django_db
def test_prune__deletes_in_batches_until_done(settings, monkeypatch):
    monkeypatch.setattr(services, "PRUNE_BATCH", 2)
    settings.REALTIME_RETENTION_EVENTS = 2
    _events(TOPIC, 7)
    _age(TOPIC, [1], dt.timedelta(days=8))

    assert events_prune() == 5
    assert _seqs(TOPIC) == [6, 7]


@pytest.mark.django_db
def test_prune__takes_the_acks_of_pruned_events_along():
    world = make_world()
    raised = event_publish(
        topic=world.topic,
        event="emergency.raised",
        payload={"kind": "fire", "text": "smoke"},
        user=world.photographer,
    ).event
    ack_record(user=world.planner, topic=world.topic, seq=raised.seq)
    # resolved: retention keeps open emergencies whatever their age
    event_publish(
        topic=world.topic,
        event="emergency.resolved",
        payload={"id": raised.payload["id"]},
        user=world.photographer,
    )
    _age(world.topic, [raised.seq], dt.timedelta(days=8))

    assert events_prune() == 1
    assert not Ack.objects.exists()
    assert _seqs(world.topic) == [2, 3]  # ack.updated and the resolution are recent and stay


# --- idempotency keys -----------------------------------------------------------------


@pytest.mark.django_db
def test_prune__deletes_idempotency_keys_older_than_24_hours():
    # given
    world = make_world()
    for key in ("old", "new"):
        event_publish(
            topic=world.topic,
            event="message.posted",
            payload={"text": key},
            user=world.planner,
            idempotency_key=key,
        )
    IdempotencyKey.objects.filter(key="old").update(
        created_at=timezone.now() - dt.timedelta(hours=25)
    )

    # when
    deleted = events_prune()

    # then: keys are not counted as events, and events are kept
    assert deleted == 0
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["new"]
    assert _seqs(world.topic) == [1, 2]


@pytest.mark.django_db
def test_prune__repeat_after_its_event_was_pruned_still_gets_the_first_seq(settings):
    # given: a keyed publish whose event fell out of the count window within 24 h
    settings.REALTIME_RETENTION_EVENTS = 1
    world = make_world()

    def publish(key=None):
        return event_publish(
            topic=world.topic,
            event="message.posted",
            payload={"text": "hi"},
            user=world.planner,
            idempotency_key=key,
        )

    first = publish("keyed")
    publish()
    events_prune()
    assert _seqs(world.topic) == [2]

    # when
    again = publish("keyed")

    # then
    assert (again.created, again.event.seq) == (False, first.event.seq)
    assert _seqs(world.topic) == [2]


# --- replay after pruning -------------------------------------------------------------


# --- the task -------------------------------------------------------------------------


@pytest.mark.django_db
def test_prune_task__calls_the_service_and_returns_the_count(settings):
    settings.REALTIME_RETENTION_EVENTS = 1
    _events(TOPIC, 3)

    assert prune_event_log() == 2
    assert _seqs(TOPIC) == [3]


def test_prune_task__is_scheduled_hourly_with_expiry():
    entry = next(
        e
        for e in django_settings.CELERY_BEAT_SCHEDULE.values()
        if e["task"] == "realtime.tasks.prune_event_log"
    )

    assert prune_event_log.name == "realtime.tasks.prune_event_log"
    assert float(entry["schedule"]) == 3600
    assert 0 < entry["options"]["expires"] <= 3600
