"""The event log: seq allocation, atomic effects, idempotency, broadcast on commit, acks."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import threading
import time

import orjson
import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from realtime import layer as realtime_layer
from realtime import selectors
from realtime.errors import RealtimeError
from realtime.messages import group_name
from realtime.models import Ack, Event, IdempotencyKey, TopicCursor
from realtime.protocol import event_frame, event_frame_text
from realtime.services import ack_record, event_publish, event_publish_system
from tests.factories import make_item, make_user
from tests.realtime.test_topics import World, make_world
from weddings.models import TimelineItem

MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def world(db) -> World:
    return make_world()


def _post(world: World, text: str = "hello", *, user=None, topic=None, key=None):
    return event_publish(
        topic=topic or world.topic,
        event="message.posted",
        payload={"text": text},
        user=user or world.planner,
        idempotency_key=key,
    )


def _seqs(topic: str) -> list[int]:
    return list(Event.objects.filter(topic=topic).order_by("seq").values_list("seq", flat=True))


# --- seq allocation -------------------------------------------------------------------


def test_publish__allocates_gapless_seq_per_topic_starting_at_1(world):
    # given: a second wedding the planner works on too
    world.other_wedding.bookings.create(supplier=world.planner_supplier)

    # when: publishes alternate between the two topics
    first = [_post(world, f"a{i}").event.seq for i in range(3)]
    other = [_post(world, f"b{i}", topic=world.other_topic).event.seq for i in range(2)]
    more = [_post(world, "a3").event.seq]

    # then
    assert first + more == [1, 2, 3, 4]
    assert other == [1, 2]
    assert _seqs(world.topic) == [1, 2, 3, 4]
    assert selectors.topic_seq(world.topic) == 4
    assert selectors.topic_seq(world.other_topic) == 2
    assert selectors.topic_seq("wedding:999999") == 0


def test_publish__stores_the_event_before_returning(world):
    result = _post(world, "stored")

    stored = Event.objects.get(topic=world.topic, seq=result.event.seq)
    assert result.created is True
    assert stored.event == "message.posted"
    assert stored.payload == {"text": "stored"}
    assert stored.actor_user_id == world.planner.pk
    assert stored.actor_supplier_id == world.planner_supplier.pk
    assert stored.priority == "normal"


def _at_once(*calls) -> tuple[list, list[Exception]]:
    """Run the calls in threads released together; each closes its own connection."""
    start = threading.Barrier(len(calls))
    results, errors = [], []

    def run(call) -> None:
        try:
            start.wait(timeout=10)
            results.append(call())
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, errors


def _publish_concurrently(world: World, *, per_thread: int) -> tuple[list[int], list[Exception]]:
    """Four users publish ``per_thread`` messages each at once, on their own connections."""

    def publisher(user):
        return lambda: [
            _post(world, f"{user.pk}-{i}", user=user).event.seq for i in range(per_thread)
        ]

    users = [world.planner, world.photographer, make_user(is_staff=True), world.staff]
    results, errors = _at_once(*[publisher(user) for user in users])
    return [seq for seqs in results for seq in seqs], errors


def _assert_gapless(world: World, seqs: list[int], total: int) -> None:
    assert sorted(seqs) == list(range(1, total + 1))  # each publisher got a distinct seq
    assert _seqs(world.topic) == list(range(1, total + 1))
    assert TopicCursor.objects.get(topic=world.topic).last_seq == total
    texts = Event.objects.filter(topic=world.topic).values_list("payload__text", flat=True)
    assert len(set(texts)) == total  # no publish stored twice, none lost


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_publish__concurrent_publishers_get_seqs_1_to_200(settings):
    # On PostgreSQL (CI) the cursor row lock serialises them; on SQLite the IMMEDIATE
    # transactions do (docs/adr/0002-seq-allocation.md).
    settings.CHANNEL_LAYERS = MEMORY_LAYER
    world = make_world()  # a fresh topic: the cursor row is created under the race too

    seqs, errors = _publish_concurrently(world, per_thread=50)

    assert errors == []
    _assert_gapless(world, seqs, 200)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_publish__concurrent_repeats_of_one_idempotency_key_store_one_event(settings):
    # given: the same publish sent four times at once (a client retrying on four sockets)
    settings.CHANNEL_LAYERS = MEMORY_LAYER
    world = make_world()

    # when
    results, errors = _at_once(*[lambda: _post(world, "once", key="retry-me")] * 4)

    # then
    assert errors == []
    assert sorted(r.created for r in results) == [False, False, False, True]
    assert {r.event.seq for r in results} == {1}
    assert _seqs(world.topic) == [1]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_publish__concurrent_reuse_of_a_key_on_two_topics_stores_one(settings):
    settings.CHANNEL_LAYERS = MEMORY_LAYER
    world = make_world()
    world.other_wedding.bookings.create(supplier=world.planner_supplier)

    results, errors = _at_once(
        lambda: _post(world, "a", key="twice"),
        lambda: _post(world, "b", topic=world.other_topic, key="twice"),
    )

    assert len(results) == len(errors) == 1
    assert isinstance(errors[0], RealtimeError)  # not a raw IntegrityError
    assert errors[0].extra == {"field": "idempotency_key"}
    assert Event.objects.filter(topic__in=[world.topic, world.other_topic]).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_ack__concurrent_acks_each_count_all_earlier_ones(settings):
    # given
    settings.CHANNEL_LAYERS = MEMORY_LAYER
    world = make_world()
    emergency = event_publish(
        topic=world.topic,
        event="emergency.raised",
        payload={"kind": "medical", "text": "help"},
        user=world.photographer,
    ).event
    users = [world.planner, world.photographer, make_user(is_staff=True), world.staff]

    # when
    results, errors = _at_once(
        *[
            (lambda user=user: ack_record(user=user, topic=world.topic, seq=emergency.seq))
            for user in users
        ]
    )

    # then
    assert errors == []
    assert all(r.created for r in results)
    updates = Event.objects.filter(topic=world.topic, event="ack.updated").order_by("seq")
    assert [u.payload["count"] for u in updates] == [1, 2, 3, 4]
    assert sorted(updates.last().payload["acked"]) == sorted(u.pk for u in users)


@pytest.mark.parametrize("who", ["planner", "photographer"])
def test_publish__own_supplier_status_costs_no_more_queries_than_a_message(world, who):
    # given: each member's own supplier, booked on the wedding
    user = getattr(world, who)
    supplier = world.planner_supplier if who == "planner" else world.photo_supplier
    _post(world, "warm", user=user)  # the topic's cursor row exists

    # when
    with CaptureQueriesContext(connection) as message:
        _post(world, "a note", user=user)
    with CaptureQueriesContext(connection) as status:
        event_publish(
            topic=world.topic,
            event="vendor.status",
            payload={"supplier_id": supplier.pk, "status": "arrived"},
            user=user,
        )

    # then: the access check read the acting suppliers; the status needs nothing more
    assert len(status.captured_queries) == len(message.captured_queries)
    assert Event.objects.filter(topic=world.topic).latest("seq").payload["supplier_id"] == (
        supplier.pk
    )


# --- nothing stored on failure --------------------------------------------------------


def _cursor(topic: str) -> int | None:
    return TopicCursor.objects.filter(topic=topic).values_list("last_seq", flat=True).first()


@pytest.mark.parametrize(
    ("event", "payload", "code"),
    [
        ("message.posted", {"text": ""}, "invalid_payload"),
        ("message.posted", {"text": "hi", "to": "all"}, "invalid_payload"),
        ("nope", {"text": "hi"}, "invalid_payload"),
        ("timeline.item.created", {"title": "x", "starts_at": "2026-06-13T13:00:00Z"}, "forbidden"),
    ],
)
def test_publish__failure_stores_nothing_and_keeps_the_cursor(world, event, payload, code):
    # given
    _post(world, "first")

    # when
    with pytest.raises(RealtimeError) as info:
        event_publish(topic=world.topic, event=event, payload=payload, user=world.photographer)

    # then
    assert info.value.code == code
    assert _seqs(world.topic) == [1]
    assert _cursor(world.topic) == 1
    assert _post(world, "next").event.seq == 2


def test_publish__conflict_stores_nothing_and_keeps_the_cursor(world):
    item = make_item(wedding=world.wedding, title="Vows", start=(14, 0))
    TimelineItem.objects.filter(pk=item.pk).update(version=2)

    with pytest.raises(RealtimeError) as info:
        event_publish(
            topic=world.topic,
            event="timeline.item.updated",
            payload={"id": item.pk, "version": 1, "title": "Changed"},
            user=world.planner,
        )

    item.refresh_from_db()
    assert info.value.code == "conflict"
    assert info.value.extra["current"]["id"] == item.pk
    assert (item.title, item.version) == ("Vows", 2)
    assert not Event.objects.exists()
    assert _cursor(world.topic) in (None, 0)


@pytest.mark.parametrize(
    ("event", "payload", "field"),
    [
        ("timeline.item.updated", {"version": 1, "title": "Theirs now"}, "payload.id"),
        ("timeline.item.deleted", {"version": 1}, "payload.id"),
        ("timeline.shifted", {"minutes": 20}, "payload.from_item_id"),
    ],
)
def test_publish__item_of_another_wedding_is_missing_and_unchanged(world, event, payload, field):
    # given: the planner's wedding, and an item of another wedding, named by its id
    theirs = make_item(wedding=world.other_wedding, title="Their vows", start=(14, 0))
    id_field = "from_item_id" if event == "timeline.shifted" else "id"

    # when
    with pytest.raises(RealtimeError) as info:
        event_publish(
            topic=world.topic, event=event, payload={id_field: theirs.pk, **payload},
            user=world.planner,
        )  # fmt: skip

    # then: reported like a missing item; the item and both topics untouched
    assert (info.value.code, info.value.extra["field"]) == ("invalid_payload", field)
    assert "no such timeline item on this wedding" in info.value.message
    theirs.refresh_from_db()
    assert (theirs.title, theirs.version, theirs.starts_at.minute) == ("Their vows", 1, 0)
    assert not Event.objects.exists()


def test_publish__effect_is_undone_when_the_event_cannot_be_stored(world):
    # given: a row squatting on the next seq, so storing the event fails after the
    # timeline service has already changed the item
    item = make_item(wedding=world.wedding, title="Vows", start=(14, 0))
    Event.objects.create(topic=world.topic, seq=1, event="squatter", payload={})

    # when
    with pytest.raises(Exception, match=r"(?i)unique"):
        event_publish(
            topic=world.topic,
            event="timeline.item.updated",
            payload={"id": item.pk, "version": 1, "title": "Changed"},
            user=world.planner,
        )

    # then: same transaction, so the item change went with the failed insert
    item.refresh_from_db()
    assert (item.title, item.version) == ("Vows", 1)
    assert _cursor(world.topic) in (None, 0)


# --- idempotency ----------------------------------------------------------------------


def test_idempotency__same_user_and_key_returns_the_first_seq(world):
    first = _post(world, "once", key="k-1")
    _post(world, "between")

    again = _post(world, "once", key="k-1")

    assert (first.created, again.created) == (True, False)
    assert again.event.seq == first.event.seq == 1
    assert again.event.pk == first.event.pk
    assert _seqs(world.topic) == [1, 2]
    assert Event.objects.get(seq=1).idempotency_key == "k-1"


def test_idempotency__repeat_of_an_applied_timeline_edit_is_not_a_conflict(world):
    item = make_item(wedding=world.wedding, title="Vows", start=(14, 0))
    payload = {"id": item.pk, "version": 1, "title": "Ceremony"}

    first = event_publish(
        topic=world.topic,
        event="timeline.item.updated",
        payload=payload,
        user=world.planner,
        idempotency_key="edit-1",
    )
    again = event_publish(
        topic=world.topic,
        event="timeline.item.updated",
        payload=payload,
        user=world.planner,
        idempotency_key="edit-1",
    )

    item.refresh_from_db()
    assert again.created is False
    assert again.event.seq == first.event.seq
    assert item.version == 2


def test_idempotency__other_user_with_the_same_key_gets_a_new_event(world):
    first = _post(world, "mine", key="shared-key")

    theirs = _post(world, "theirs", user=world.photographer, key="shared-key")

    assert theirs.created is True
    assert theirs.event.seq == first.event.seq + 1
    assert IdempotencyKey.objects.filter(key="shared-key").count() == 2


def test_idempotency__key_older_than_24_hours_may_be_reused(world):
    # given
    first = _post(world, "yesterday", key="daily")
    IdempotencyKey.objects.update(created_at=timezone.now() - dt.timedelta(hours=24, minutes=1))

    # when
    again = _post(world, "today", key="daily")

    # then
    assert again.created is True
    assert again.event.seq == first.event.seq + 1
    assert IdempotencyKey.objects.get(key="daily").seq == again.event.seq


def test_idempotency__key_younger_than_24_hours_still_counts(world):
    first = _post(world, "earlier", key="daily")
    IdempotencyKey.objects.update(created_at=timezone.now() - dt.timedelta(hours=23, minutes=59))

    again = _post(world, "earlier", key="daily")

    assert (again.created, again.event.seq) == (False, first.event.seq)


def test_idempotency__key_reused_on_another_topic_or_event_is_refused(world):
    world.other_wedding.bookings.create(supplier=world.planner_supplier)
    _post(world, "here", key="k")

    with pytest.raises(RealtimeError) as other_topic:
        _post(world, "there", topic=world.other_topic, key="k")
    with pytest.raises(RealtimeError) as other_event:
        event_publish(
            topic=world.topic,
            event="wedding.updated",
            payload={"guest_count": 3},
            user=world.planner,
            idempotency_key="k",
        )

    for info in (other_topic, other_event):
        assert info.value.code == "invalid_payload"
        assert info.value.extra == {"field": "idempotency_key"}
    assert Event.objects.count() == 1
    world.wedding.refresh_from_db()
    assert world.wedding.guest_count == 0


@pytest.mark.parametrize("key", ["", "k" * 65, "has space", "semi;colon", "é", 5, b"bytes"])
def test_idempotency__malformed_key_names_the_field(world, key):
    with pytest.raises(RealtimeError) as info:
        _post(world, "x", key=key)

    assert info.value.code == "invalid_payload"
    assert info.value.extra == {"field": "idempotency_key"}
    assert not Event.objects.exists()


@pytest.mark.parametrize("key", ["a", "k" * 64, "A-z_0-9"])
def test_idempotency__well_formed_keys_are_accepted(world, key):
    assert _post(world, "x", key=key).created is True


# --- broadcast ------------------------------------------------------------------------


async def _received(layer, channel: str, wait: float = 0.2) -> list[dict]:
    """Every message waiting on (or arriving within ``wait`` at) a channel."""
    messages = []
    while True:
        try:
            messages.append(await asyncio.wait_for(layer.receive(channel), wait))
        except TimeoutError:
            return messages


@pytest.fixture
def memory_layer(settings) -> InMemoryChannelLayer:
    settings.CHANNEL_LAYERS = MEMORY_LAYER  # resets the layer: a fresh one per test
    return get_channel_layer()


async def _subscriber(layer, topic: str) -> str:
    channel = await layer.new_channel()
    await layer.group_add(group_name(topic), channel)
    return channel


@pytest.mark.django_db(transaction=True)
async def test_broadcast__sent_once_after_commit_and_not_before(memory_layer):
    # given
    world = await database_sync_to_async(make_world)()
    channel = await _subscriber(memory_layer, world.topic)

    def publish_in_a_transaction():
        with transaction.atomic():
            result = _post(world, "on commit")
            before_commit = async_to_sync(_received)(memory_layer, channel)
        return result, before_commit

    # when
    result, before_commit = await database_sync_to_async(publish_in_a_transaction)()
    after_commit = await _received(memory_layer, channel)

    # then
    assert before_commit == []
    assert len(after_commit) == 1
    message = after_commit[0]
    assert message["type"] == "rt.event"
    assert (message["topic"], message["seq"]) == (world.topic, result.event.seq)
    assert orjson.loads(message["text"]) == event_frame(result.event)


@pytest.mark.django_db(transaction=True)
async def test_broadcast__nothing_sent_when_the_transaction_rolls_back(memory_layer):
    world = await database_sync_to_async(make_world)()
    channel = await _subscriber(memory_layer, world.topic)

    def publish_then_roll_back():
        with transaction.atomic():
            _post(world, "never")
            transaction.set_rollback(True)

    await database_sync_to_async(publish_then_roll_back)()

    assert await _received(memory_layer, channel) == []
    assert not await Event.objects.filter(topic=world.topic).aexists()


@pytest.mark.django_db(transaction=True)
async def test_broadcast__idempotent_repeat_sends_nothing(memory_layer):
    world = await database_sync_to_async(make_world)()
    channel = await _subscriber(memory_layer, world.topic)

    await database_sync_to_async(_post)(world, "once", key="k")
    await database_sync_to_async(_post)(world, "once", key="k")

    assert [m["seq"] for m in await _received(memory_layer, channel)] == [1]


@pytest.mark.django_db(transaction=True)
async def test_broadcast__goes_to_the_topic_group_only(memory_layer):
    world = await database_sync_to_async(make_world)()
    mine = await _subscriber(memory_layer, world.topic)
    others = await _subscriber(memory_layer, world.other_topic)

    await database_sync_to_async(_post)(world, "just us")

    assert len(await _received(memory_layer, mine)) == 1
    assert await _received(memory_layer, others) == []


class HangingLayer(InMemoryChannelLayer):
    """A layer whose sends never finish (a stuck Redis)."""

    async def group_send(self, group, message):
        await asyncio.sleep(3600)


class BrokenLayer(InMemoryChannelLayer):
    """A layer whose sends fail (Redis refusing connections)."""

    async def group_send(self, group, message):
        raise ConnectionRefusedError("no Redis here")


@pytest.mark.parametrize("layer", ["HangingLayer", "BrokenLayer"])
@pytest.mark.django_db(transaction=True)
def test_broadcast__failure_is_logged_not_raised_and_the_event_stays(
    settings, monkeypatch, caplog, layer
):
    # given: the layer breaks after the data is made (other on-commit senders may wait)
    world = make_world()
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": f"{__name__}.{layer}"}}
    monkeypatch.setattr(realtime_layer, "SEND_TIMEOUT_SECONDS", 0.3)

    # when
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="realtime.broadcast"):
        result = _post(world, "stored anyway")
    elapsed = time.monotonic() - started

    # then
    assert result.created is True
    assert Event.objects.filter(topic=world.topic, seq=1).exists()
    assert elapsed < 3
    assert any("broadcast of" in r.getMessage() for r in caplog.records)


# --- frames ---------------------------------------------------------------------------


def test_event_frame__has_the_protocol_fields(world):
    event = _post(world, "hi").event
    event.created_at = dt.datetime(
        2026, 6, 13, 15, 2, 11, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1))
    )

    frame = event_frame(event)

    assert frame == {
        "type": "event",
        "topic": world.topic,
        "seq": 1,
        "event": "message.posted",
        "priority": "normal",
        "payload": {"text": "hi"},
        "actor": {"user_id": world.planner.pk, "supplier_id": world.planner_supplier.pk},
        "ts": "2026-06-13T14:02:11.123Z",
    }
    assert orjson.loads(event_frame_text(event)) == frame


def test_event_frame__marks_ack_required_and_system_actor(world):
    raised = event_publish(
        topic=world.topic,
        event="emergency.raised",
        payload={"kind": "medical", "text": "help"},
        user=world.staff,
    ).event
    system = event_publish_system("ops", "alert.raised", {"text": "x"}, priority="critical")

    assert event_frame(raised)["ack_required"] is True
    assert event_frame(raised)["priority"] == "critical"
    assert event_frame(raised)["actor"] == {"user_id": world.staff.pk, "supplier_id": None}
    assert event_frame(system)["actor"] == {"user_id": None, "supplier_id": None}
    assert "ack_required" not in event_frame(system)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event_frame(system)["ts"])


def test_group_name__is_a_valid_channel_layer_group():
    assert group_name("wedding:42") == "rt.wedding.42"
    assert group_name("supplier:7") == "rt.supplier.7"
    assert group_name("ops") == "rt.ops"
    for topic in ("ops", "supplier:7", f"wedding:{2**63 - 1}"):
        assert InMemoryChannelLayer().require_valid_group_name(group_name(topic))


# --- system events --------------------------------------------------------------------


def test_publish_system__skips_user_checks_and_shares_the_topic_seq(world):
    _post(world, "client")

    system = event_publish_system(world.topic, "alert.raised", {"text": "late"})
    ops = event_publish_system("ops", "scaling.decision", {"replicas": 3})

    assert (system.seq, system.actor_user_id) == (2, None)
    assert ops.seq == 1
    assert _post(world, "client again").event.seq == 3


@pytest.mark.parametrize(
    ("topic", "event", "payload", "code"),
    [
        ("wedding:0042", "alert.raised", {}, "unknown_topic"),
        ("ops", "Not An Event", {}, "invalid_payload"),
        ("ops", "alert.raised", [], "invalid_payload"),
        ("ops", "alert.raised", {"when": dt.date(2026, 1, 1)}, None),  # stored as a string
        ("ops", "alert.raised", {"x": object()}, "invalid_payload"),
    ],
)
def test_publish_system__validates_topic_name_and_payload(db, topic, event, payload, code):
    if code is None:
        stored = event_publish_system(topic, event, payload)
        stored.refresh_from_db()
        assert stored.payload == {"when": "2026-01-01"}
        return
    with pytest.raises(RealtimeError) as info:
        event_publish_system(topic, event, payload)
    assert info.value.code == code
    assert not Event.objects.exists()


# --- acknowledgements -----------------------------------------------------------------


def _raise_emergency(world: World) -> Event:
    return event_publish(
        topic=world.topic,
        event="emergency.raised",
        payload={"kind": "medical", "text": "Guest fainted"},
        user=world.planner,
    ).event


def test_ack__records_once_and_emits_one_ack_updated(world):
    # given
    emergency = _raise_emergency(world)
    world.photographer.first_name, world.photographer.last_name = "Pat", "Lens"
    world.photographer.save()

    # when
    first = ack_record(user=world.photographer, topic=world.topic, seq=emergency.seq)
    repeat = ack_record(user=world.photographer, topic=world.topic, seq=emergency.seq)

    # then
    assert (first.created, repeat.created) == (True, False)
    assert first.seq == repeat.seq == emergency.seq
    assert repeat.update is None
    assert Ack.objects.filter(event=emergency).count() == 1
    updates = Event.objects.filter(topic=world.topic, event="ack.updated")
    assert list(updates) == [first.update]
    assert first.update.seq == emergency.seq + 1
    assert first.update.actor_user_id is None
    assert first.update.payload == {
        "seq": emergency.seq,
        "user_id": world.photographer.pk,
        "name": "Pat Lens",
        "supplier_id": world.photo_supplier.pk,
        "acked": [world.photographer.pk],
        "count": 1,
    }


def test_ack__each_new_ack_updates_the_count(world):
    emergency = _raise_emergency(world)

    ack_record(user=world.photographer, topic=world.topic, seq=emergency.seq)
    second = ack_record(user=world.staff, topic=world.topic, seq=emergency.seq)

    assert second.acked == [world.photographer.pk, world.staff.pk]
    assert second.update.payload["count"] == 2
    assert second.update.payload["supplier_id"] is None
    assert selectors.acked_user_ids(emergency) == [world.photographer.pk, world.staff.pk]


def test_ack__of_an_event_without_ack_required_is_stored_silently(world):
    message = _post(world, "fyi").event

    result = ack_record(user=world.photographer, topic=world.topic, seq=message.seq)

    assert (result.created, result.update, result.acked) == (True, None, [world.photographer.pk])
    assert _seqs(world.topic) == [1]


def test_ack__by_someone_who_may_not_see_the_topic_is_forbidden(world):
    emergency = _raise_emergency(world)

    for user in (world.outsider, world.inactive):
        with pytest.raises(RealtimeError) as info:
            ack_record(user=user, topic=world.topic, seq=emergency.seq)
        assert info.value.code == "forbidden"
    assert not Ack.objects.exists()


@pytest.mark.parametrize("seq", [0, -1, 99, "1", True, None, 1.0])
def test_ack__of_a_missing_or_malformed_seq_names_the_field(world, seq):
    _raise_emergency(world)

    with pytest.raises(RealtimeError) as info:
        ack_record(user=world.planner, topic=world.topic, seq=seq)

    assert info.value.code == "invalid_payload"
    assert info.value.extra == {"field": "seq"}
    assert not Ack.objects.exists()


def test_ack__of_a_timeline_shift_names_the_suppliers_expected(world):
    ceremony = make_item(wedding=world.wedding, title="Ceremony", start=(14, 0))
    ceremony.suppliers.add(world.photo_supplier)
    shift = event_publish(
        topic=world.topic,
        event="timeline.shifted",
        payload={"from_item_id": ceremony.pk, "minutes": 10},
        user=world.planner,
    ).event

    result = ack_record(user=world.photographer, topic=world.topic, seq=shift.seq)

    assert shift.payload["ack_suppliers"] == [world.photo_supplier.pk]
    assert result.update.payload["supplier_id"] in shift.payload["ack_suppliers"]


# --- selectors ------------------------------------------------------------------------


def test_events_since__returns_later_events_in_order_up_to_limit(world):
    for i in range(5):
        _post(world, f"m{i}")

    assert [e.seq for e in selectors.events_since(world.topic, 2)] == [3, 4, 5]
    assert [e.seq for e in selectors.events_since(world.topic, 0, limit=2)] == [1, 2]
    assert selectors.events_since(world.topic, 5) == []
    assert selectors.events_since(world.other_topic, 0) == []


def test_vendor_statuses__latest_per_booked_supplier(world):
    # given
    def status(user, supplier, value, **extra):
        event_publish(
            topic=world.topic,
            event="vendor.status",
            payload={"supplier_id": supplier.pk, "status": value, **extra},
            user=user,
        )

    status(world.photographer, world.photo_supplier, "en_route")
    status(world.planner, world.planner_supplier, "arrived")
    status(world.photographer, world.photo_supplier, "running_late", minutes_late=10)
    _post(world, "noise")

    # when
    statuses = selectors.vendor_statuses(world.topic)

    # then
    assert [(s["supplier_id"], s["status"], s["seq"]) for s in statuses] == sorted(
        [(world.planner_supplier.pk, "arrived", 2), (world.photo_supplier.pk, "running_late", 3)]
    )
    late = next(s for s in statuses if s["supplier_id"] == world.photo_supplier.pk)
    assert late["minutes_late"] == 10
    assert re.fullmatch(r"\S+\.\d{3}Z", late["ts"])
    world.wedding.bookings.filter(supplier=world.photo_supplier).update(active=False)
    assert [s["supplier_id"] for s in selectors.vendor_statuses(world.topic)] == [
        world.planner_supplier.pk
    ]


def test_user_without_suppliers_has_no_actor_supplier(world):
    staff_event = _post(world, "from staff", user=world.staff).event

    assert staff_event.actor_supplier_id is None


# --- admin ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["event", "ack", "topiccursor"])
def test_admin__staff_may_look_but_nobody_may_write(world, model):
    # given
    emergency = _raise_emergency(world)
    ack_record(user=world.planner, topic=world.topic, seq=emergency.seq)
    staff = Client(HTTP_X_FORWARDED_PROTO="https")
    staff.force_login(make_user(is_staff=True, is_superuser=True))
    vendor = Client(HTTP_X_FORWARDED_PROTO="https")
    vendor.force_login(world.planner)
    obj = {"event": emergency, "ack": Ack.objects.get(), "topiccursor": TopicCursor.objects.get()}

    # when
    listing = staff.get(reverse(f"admin:realtime_{model}_changelist"))
    detail = staff.get(reverse(f"admin:realtime_{model}_change", args=[obj[model].pk]))
    add = staff.get(reverse(f"admin:realtime_{model}_add"))
    delete = staff.post(reverse(f"admin:realtime_{model}_delete", args=[obj[model].pk]))
    edit = staff.post(reverse(f"admin:realtime_{model}_change", args=[obj[model].pk]), {})
    refused = vendor.get(reverse(f"admin:realtime_{model}_changelist"))

    # then
    assert (listing.status_code, detail.status_code) == (200, 200)
    assert add.status_code == delete.status_code == edit.status_code == 403
    assert refused.status_code == 302  # to the admin login
    assert Event.objects.count() == 2
    assert TopicCursor.objects.get().last_seq == 2


@pytest.mark.django_db(transaction=True)
async def test_broadcast__concurrent_publishes_of_one_topic_reach_the_group_in_seq_order():
    # given: the configured channel layer (Redis in CI), a member of the topic's group,
    # and publishes running side by side in the realtime database threads
    from core.db import in_db_thread

    world = await database_sync_to_async(make_world)()
    await database_sync_to_async(_post)(world, "first")  # the topic's cursor exists
    layer = get_channel_layer()
    channel = await _subscriber(layer, world.topic)
    publish = in_db_thread(_post)

    # when
    await asyncio.gather(*(publish(world, f"m{i}") for i in range(60)))

    # then: every broadcast arrives once, in seq order, with no gap to read from the log
    seqs = []
    while len(seqs) < 60:
        message = await asyncio.wait_for(layer.receive(channel), 5)
        seqs.append(message["seq"])
    assert seqs == list(range(2, 62))
