"""The event catalogue (PROTOCOL §5): payload validation, priorities, effects on the wedding."""

from __future__ import annotations

import datetime as dt

import pytest

from realtime.catalogue import CATALOGUE, MAX_PAYLOAD_BYTES, spec_for
from realtime.errors import RealtimeError
from realtime.models import Event, TopicCursor
from realtime.services import event_publish
from tests.factories import make_item, make_supplier
from tests.realtime.test_topics import make_world
from weddings.models import TimelineItem


def _invalid(event: str, payload) -> RealtimeError:
    with pytest.raises(RealtimeError) as info:
        spec_for(event).validate(payload)
    assert info.value.code == "invalid_payload"
    return info.value


# --- validation (no database) ---------------------------------------------------------

START = "2026-06-13T13:00:00Z"

VALID = [
    ("message.posted", {"text": "Cars are here"}),
    ("message.posted", {"text": "x" * 4000}),
    ("vendor.status", {"supplier_id": 3, "status": "en_route"}),
    ("vendor.status", {"supplier_id": 3, "status": "running_late", "minutes_late": 0}),
    ("vendor.status", {"supplier_id": 3, "status": "running_late", "minutes_late": 600}),
    ("vendor.status", {"supplier_id": 3, "status": "done", "note": "n" * 500}),
    ("emergency.raised", {"kind": "medical", "text": "Guest fainted"}),
    ("emergency.raised", {"id": "e-1_A", "kind": "k" * 40, "text": "t"}),
    ("emergency.resolved", {"id": "e-1_A"}),
    ("emergency.resolved", {"id": "e-1_A", "text": "All fine"}),
    ("wedding.updated", {"guest_count": 0}),
    ("wedding.updated", {"venue": "Old Mill", "notes": ""}),
    ("timeline.item.created", {"title": "Vows", "starts_at": START}),
    (
        "timeline.item.created",
        {
            "title": "Vows",
            "starts_at": "2026-06-13T14:00:00+01:00",
            "ends_at": None,
            "location": "Garden",
            "supplier_ids": [1, 2],
            "status": "in_progress",
            "key_moment": True,
            "pinned": False,
        },
    ),
    ("timeline.item.updated", {"id": 1, "version": 3, "ends_at": None}),
    ("timeline.item.deleted", {"id": 1, "version": 1}),
    ("timeline.shifted", {"from_item_id": 1, "minutes": -1440}),
    ("timeline.shifted", {"from_item_id": 1, "minutes": 15, "version": 2}),
]


@pytest.mark.parametrize(("event", "payload"), VALID)
def test_validate__accepts_good_payloads(event, payload):
    spec_for(event).validate(payload)


INVALID = [
    # message.posted
    ("message.posted", {}, "payload.text"),
    ("message.posted", {"text": ""}, "payload.text"),
    ("message.posted", {"text": " \n\t "}, "payload.text"),
    ("message.posted", {"text": 5}, "payload.text"),
    ("message.posted", {"text": None}, "payload.text"),
    ("message.posted", {"text": "x" * 4001}, "payload.text"),
    ("message.posted", {"text": "hi", "html": "<b>hi</b>"}, "payload.html"),
    # vendor.status
    ("vendor.status", {"status": "arrived"}, "payload.supplier_id"),
    ("vendor.status", {"supplier_id": "3", "status": "arrived"}, "payload.supplier_id"),
    ("vendor.status", {"supplier_id": 0, "status": "arrived"}, "payload.supplier_id"),
    ("vendor.status", {"supplier_id": True, "status": "arrived"}, "payload.supplier_id"),
    ("vendor.status", {"supplier_id": 3, "status": "asleep"}, "payload.status"),
    ("vendor.status", {"supplier_id": 3}, "payload.status"),
    ("vendor.status", {"supplier_id": 3, "status": "running_late"}, "payload.minutes_late"),
    (
        "vendor.status",
        {"supplier_id": 3, "status": "arrived", "minutes_late": 5},
        "payload.minutes_late",
    ),
    (
        "vendor.status",
        {"supplier_id": 3, "status": "running_late", "minutes_late": 601},
        "payload.minutes_late",
    ),
    (
        "vendor.status",
        {"supplier_id": 3, "status": "running_late", "minutes_late": -1},
        "payload.minutes_late",
    ),
    (
        "vendor.status",
        {"supplier_id": 3, "status": "running_late", "minutes_late": "5"},
        "payload.minutes_late",
    ),
    (
        "vendor.status",
        {"supplier_id": 3, "status": "running_late", "minutes_late": 5.0},
        "payload.minutes_late",
    ),
    ("vendor.status", {"supplier_id": 3, "status": "done", "note": "n" * 501}, "payload.note"),
    ("vendor.status", {"supplier_id": 3, "status": "done", "note": 1}, "payload.note"),
    ("vendor.status", {"supplier_id": 3, "status": "done", "eta": "5m"}, "payload.eta"),
    # emergency.*
    ("emergency.raised", {"text": "Fire"}, "payload.kind"),
    ("emergency.raised", {"kind": "", "text": "Fire"}, "payload.kind"),
    ("emergency.raised", {"kind": "   ", "text": "Fire"}, "payload.kind"),
    ("emergency.raised", {"kind": "k" * 41, "text": "Fire"}, "payload.kind"),
    ("emergency.raised", {"kind": "fire"}, "payload.text"),
    ("emergency.raised", {"kind": "fire", "text": "x" * 4001}, "payload.text"),
    ("emergency.raised", {"kind": "fire", "text": " "}, "payload.text"),
    ("emergency.raised", {"id": "has space", "kind": "fire", "text": "x"}, "payload.id"),
    ("emergency.raised", {"id": 7, "kind": "fire", "text": "x"}, "payload.id"),
    ("emergency.raised", {"kind": "fire", "text": "x", "severity": 9}, "payload.severity"),
    ("emergency.resolved", {"text": "ok"}, "payload.id"),
    ("emergency.resolved", {"id": "e1\n"}, "payload.id"),
    ("emergency.resolved", {"id": "e1", "text": ""}, "payload.text"),
    ("emergency.resolved", {"id": "e1", "kind": "fire"}, "payload.kind"),
    # wedding.updated
    ("wedding.updated", {}, "payload"),
    ("wedding.updated", {"guest_count": -1}, "payload.guest_count"),
    ("wedding.updated", {"guest_count": "120"}, "payload.guest_count"),
    ("wedding.updated", {"guest_count": 100_001}, "payload.guest_count"),
    ("wedding.updated", {"venue": "v" * 201}, "payload.venue"),
    ("wedding.updated", {"notes": 123}, "payload.notes"),
    ("wedding.updated", {"date": "2026-06-14"}, "payload.date"),
    # timeline.item.*
    ("timeline.item.created", {"starts_at": START}, "payload.title"),
    ("timeline.item.created", {"title": "Vows"}, "payload.starts_at"),
    ("timeline.item.created", {"title": "Vows", "starts_at": "tomorrow"}, "payload.starts_at"),
    (
        "timeline.item.created",
        {"title": "Vows", "starts_at": "2026-06-13T13:00:00"},  # no time zone
        "payload.starts_at",
    ),
    ("timeline.item.created", {"title": 1, "starts_at": START}, "payload.title"),
    (
        "timeline.item.created",
        {"title": "Vows", "starts_at": START, "supplier_ids": [1, "2"]},
        "payload.supplier_ids[1]",
    ),
    (
        "timeline.item.created",
        {"title": "Vows", "starts_at": START, "supplier_ids": 1},
        "payload.supplier_ids",
    ),
    (
        "timeline.item.created",
        {"title": "V", "starts_at": START, "status": "late"},
        "payload.status",
    ),
    (
        "timeline.item.created",
        {"title": "V", "starts_at": START, "key_moment": "yes"},
        "payload.key_moment",
    ),
    ("timeline.item.created", {"title": "V", "starts_at": START, "pinned": 1}, "payload.pinned"),
    ("timeline.item.created", {"id": 5, "title": "V", "starts_at": START}, "payload.id"),
    ("timeline.item.created", {"title": "V", "starts_at": START, "version": 1}, "payload.version"),
    ("timeline.item.updated", {"id": 1, "title": "V"}, "payload.version"),
    ("timeline.item.updated", {"version": 1, "title": "V"}, "payload.id"),
    ("timeline.item.updated", {"id": 1, "version": "1", "title": "V"}, "payload.version"),
    ("timeline.item.updated", {"id": 1, "version": 0, "title": "V"}, "payload.version"),
    ("timeline.item.updated", {"id": 1, "version": 1}, "payload"),
    ("timeline.item.updated", {"id": 1, "version": 1, "wedding_id": 2}, "payload.wedding_id"),
    ("timeline.item.updated", {"id": 1, "version": 1, "starts_at": None}, "payload.starts_at"),
    ("timeline.item.deleted", {"version": 1}, "payload.id"),
    ("timeline.item.deleted", {"id": 1}, "payload.version"),
    ("timeline.shifted", {"minutes": 10}, "payload.from_item_id"),
    ("timeline.shifted", {"from_item_id": 1}, "payload.minutes"),
    ("timeline.shifted", {"from_item_id": 1, "minutes": 0}, "payload.minutes"),
    ("timeline.shifted", {"from_item_id": 1, "minutes": 1441}, "payload.minutes"),
    ("timeline.shifted", {"from_item_id": 1, "minutes": 1.5}, "payload.minutes"),
    ("timeline.shifted", {"from_item_id": 1, "minutes": 5, "items": []}, "payload.items"),
]


@pytest.mark.parametrize(("event", "payload", "field"), INVALID)
def test_validate__rejects_bad_payload_naming_the_field(event, payload, field):
    error = _invalid(event, payload)

    assert error.extra == {"field": field}
    assert field in error.message


@pytest.mark.parametrize("payload", [[], "text", None, 5, [{"text": "x"}]])
@pytest.mark.parametrize("event", sorted(CATALOGUE))
def test_validate__payload_must_be_a_json_object(event, payload):
    assert _invalid(event, payload).extra == {"field": "payload"}


def test_validate__payload_over_16_kib_is_refused():
    just_fits = {"text": "x" * 4000, "pad": "p" * (MAX_PAYLOAD_BYTES - 4030)}
    too_big = {"text": "x" * 4000, "pad": "p" * MAX_PAYLOAD_BYTES}

    # just_fits passes the size check and fails on the unknown field, not on the size
    assert _invalid("message.posted", just_fits).extra == {"field": "payload.pad"}
    assert _invalid("message.posted", too_big).extra == {"field": "payload"}


def test_validate__payload_that_is_not_plain_json_is_refused():
    assert _invalid("message.posted", {1: "x"}).extra == {"field": "payload"}
    assert _invalid("message.posted", {"text": 2**70}).extra == {"field": "payload"}


@pytest.mark.parametrize("event", ["ack.updated", "Message.Posted", "", None, 5, "x" * 10_000])
def test_spec_for__unknown_event_names_the_event_field(event):
    with pytest.raises(RealtimeError) as info:
        spec_for(event)

    assert info.value.code == "invalid_payload"
    assert info.value.extra == {"field": "event"}
    assert len(info.value.message) < 200


def test_catalogue__priorities_and_acknowledgement():
    table = {name: (spec.priority, spec.ack_required) for name, spec in CATALOGUE.items()}

    assert table == {
        "timeline.item.created": ("normal", False),
        "timeline.item.updated": ("normal", False),
        "timeline.item.deleted": ("normal", False),
        "timeline.shifted": ("normal", True),
        "vendor.status": ("normal", False),
        "message.posted": ("normal", False),
        "emergency.raised": ("critical", True),
        "emergency.resolved": ("critical", False),
        "wedding.updated": ("normal", False),
    }


# --- effects (database) ---------------------------------------------------------------


@pytest.fixture
def world(db):
    return make_world()


def _publish(world, event, payload, user=None):
    return event_publish(
        topic=world.topic, event=event, payload=payload, user=user or world.planner
    ).event


def _raises(code, world, event, payload, user=None) -> RealtimeError:
    with pytest.raises(RealtimeError) as info:
        _publish(world, event, payload, user)
    assert info.value.code == code
    return info.value


def test_item_created__stores_the_full_item_with_server_id_and_version(world):
    payload = {
        "title": "Vows",
        "starts_at": "2026-06-13T15:00:00+02:00",
        "ends_at": "2026-06-13T13:30:00Z",
        "location": "Garden",
        "supplier_ids": [world.photo_supplier.pk],
        "key_moment": True,
    }

    event = _publish(world, "timeline.item.created", payload)

    item = TimelineItem.objects.get()
    assert event.payload == {
        "id": item.pk,
        "title": "Vows",
        "starts_at": "2026-06-13T13:00:00.000Z",
        "ends_at": "2026-06-13T13:30:00.000Z",
        "location": "Garden",
        "supplier_ids": [world.photo_supplier.pk],
        "status": "planned",
        "key_moment": True,
        "pinned": False,
        "version": 1,
    }
    assert item.wedding_id == world.wedding.pk
    assert item.starts_at == dt.datetime(2026, 6, 13, 13, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"title": "t" * 201}, "payload.title"),
        ({"title": "   "}, "payload.title"),
        ({"ends_at": "2026-06-13T12:00:00Z"}, "payload.ends_at"),
        ({"supplier_ids": [999_999]}, "payload.supplier_ids"),
        ({"location": "l" * 201}, "payload.location"),
    ],
)
def test_item_created__domain_validation_names_the_field_and_stores_nothing(world, change, field):
    payload = {"title": "Vows", "starts_at": START, **change}

    error = _raises("invalid_payload", world, "timeline.item.created", payload)

    assert error.extra["field"] == field
    assert not TimelineItem.objects.exists()
    assert not Event.objects.exists()


def test_item_created__supplier_not_booked_on_this_wedding_is_refused(world):
    elsewhere = make_supplier()
    payload = {"title": "Vows", "starts_at": START, "supplier_ids": [elsewhere.pk]}

    error = _raises("invalid_payload", world, "timeline.item.created", payload)

    assert error.extra["field"] == "payload.supplier_ids"


def test_item_updated__applies_the_change_and_stores_the_new_version(world):
    item = make_item(wedding=world.wedding, title="Vows", start=(14, 0))

    event = _publish(
        world, "timeline.item.updated", {"id": item.pk, "version": 1, "title": "Ceremony"}
    )

    item.refresh_from_db()
    assert (item.title, item.version) == ("Ceremony", 2)
    assert event.payload["id"] == item.pk
    assert (event.payload["title"], event.payload["version"]) == ("Ceremony", 2)
    assert event.payload["location"] == ""  # the whole item, not just the change


def test_item_updated__stale_version_is_a_conflict_with_the_current_item(world):
    # given: the item moved on to version 2
    item = make_item(wedding=world.wedding, title="Vows", start=(14, 0))
    _publish(world, "timeline.item.updated", {"id": item.pk, "version": 1, "title": "Ceremony"})

    # when
    error = _raises(
        "conflict", world, "timeline.item.updated", {"id": item.pk, "version": 1, "title": "Old"}
    )

    # then
    assert error.extra["current"]["version"] == 2
    assert error.extra["current"]["title"] == "Ceremony"
    item.refresh_from_db()
    assert (item.title, item.version) == ("Ceremony", 2)
    assert Event.objects.count() == 1
    assert TopicCursor.objects.get(topic=world.topic).last_seq == 1


def test_item_updated__item_of_another_wedding_is_unreachable(world):
    foreign = make_item(wedding=world.other_wedding, title="Theirs", start=(12, 0))

    error = _raises(
        "invalid_payload",
        world,
        "timeline.item.updated",
        {"id": foreign.pk, "version": 1, "title": "X"},
    )
    missing = _raises(
        "invalid_payload",
        world,
        "timeline.item.updated",
        {"id": 999_999, "version": 1, "title": "X"},
    )

    assert error.extra["field"] == missing.extra["field"] == "payload.id"
    assert error.message == missing.message
    foreign.refresh_from_db()
    assert (foreign.title, foreign.version) == ("Theirs", 1)


def test_item_deleted__removes_the_item_and_stores_it_as_it_was(world):
    item = make_item(wedding=world.wedding, title="Vows", start=(14, 0))

    event = _publish(world, "timeline.item.deleted", {"id": item.pk, "version": 1})

    assert not TimelineItem.objects.filter(pk=item.pk).exists()
    assert (event.payload["id"], event.payload["title"], event.payload["version"]) == (
        item.pk,
        "Vows",
        1,
    )


def test_item_deleted__stale_version_deletes_nothing(world):
    item = make_item(wedding=world.wedding, title="Vows", start=(14, 0))
    TimelineItem.objects.filter(pk=item.pk).update(version=4)

    error = _raises("conflict", world, "timeline.item.deleted", {"id": item.pk, "version": 3})

    assert error.extra["current"]["version"] == 4
    assert TimelineItem.objects.filter(pk=item.pk).exists()
    assert not Event.objects.exists()


def test_shifted__moves_later_unpinned_items_and_stores_them(world):
    # given
    w = world.wedding
    before = make_item(wedding=w, title="Prep", start=(12, 0))
    ceremony = make_item(wedding=w, title="Ceremony", start=(14, 0))
    ceremony.suppliers.add(world.photo_supplier)
    sunset = make_item(wedding=w, title="Sunset", start=(20, 0), pinned=True)
    sunset.suppliers.add(world.planner_supplier)
    dinner = make_item(wedding=w, title="Dinner", start=(18, 0))

    # when
    event = _publish(world, "timeline.shifted", {"from_item_id": ceremony.pk, "minutes": 30})

    # then
    assert event.ack_required is True
    assert event.payload["from_item_id"] == ceremony.pk
    assert event.payload["minutes"] == 30
    assert [i["id"] for i in event.payload["items"]] == [ceremony.pk, dinner.pk]
    assert event.payload["items"][0]["starts_at"] == "2026-06-13T13:30:00.000Z"  # 14:30 BST
    assert event.payload["items"][0]["version"] == 2
    assert event.payload["ack_suppliers"] == [world.photo_supplier.pk]
    for item, version in ((before, 1), (ceremony, 2), (sunset, 1), (dinner, 2)):
        item.refresh_from_db()
        assert item.version == version


def test_shifted__stale_version_is_a_conflict_and_moves_nothing(world):
    ceremony = make_item(wedding=world.wedding, title="Ceremony", start=(14, 0))

    error = _raises(
        "conflict",
        world,
        "timeline.shifted",
        {"from_item_id": ceremony.pk, "minutes": 30, "version": 7},
    )

    ceremony.refresh_from_db()
    assert error.extra["current"]["id"] == ceremony.pk
    assert (ceremony.version, ceremony.starts_at.hour) == (1, 13)  # 14:00 BST
    assert not Event.objects.exists()


def test_shifted__origin_on_another_wedding_is_refused(world):
    foreign = make_item(wedding=world.other_wedding, title="Theirs", start=(14, 0))

    error = _raises(
        "invalid_payload", world, "timeline.shifted", {"from_item_id": foreign.pk, "minutes": 5}
    )

    foreign.refresh_from_db()
    assert error.extra["field"] == "payload.from_item_id"
    assert foreign.version == 1


def test_wedding_updated__applies_to_the_wedding_row(world):
    event = _publish(world, "wedding.updated", {"guest_count": 120, "venue": "Old Mill"})

    world.wedding.refresh_from_db()
    assert (world.wedding.guest_count, world.wedding.venue_name) == (120, "Old Mill")
    assert world.wedding.notes == ""
    assert event.payload == {"guest_count": 120, "venue": "Old Mill"}


def test_wedding_updated__couple_may_not(world):
    _raises("forbidden", world, "wedding.updated", {"guest_count": 1}, user=world.couple)

    world.wedding.refresh_from_db()
    assert world.wedding.guest_count == 0


def test_emergency_raised__is_critical_needs_ack_and_gets_an_id(world):
    raised = _publish(
        world, "emergency.raised", {"kind": "medical", "text": "Guest fainted"}, world.photographer
    )
    named = _publish(world, "emergency.raised", {"id": "e1", "kind": "fire", "text": "Smoke"})
    resolved = _publish(world, "emergency.resolved", {"id": "e1"})  # by its raiser

    assert (raised.priority, raised.ack_required) == ("critical", True)
    assert isinstance(raised.payload["id"], str) and raised.payload["id"]
    assert raised.payload["id"] != named.payload["id"] == "e1"
    assert (resolved.priority, resolved.ack_required) == ("critical", False)
    assert resolved.payload == {"id": "e1"}


def test_vendor_status__stores_only_the_given_fields(world):
    event = _publish(
        world,
        "vendor.status",
        {"supplier_id": world.photo_supplier.pk, "status": "running_late", "minutes_late": 15},
        world.photographer,
    )

    assert event.payload == {
        "supplier_id": world.photo_supplier.pk,
        "status": "running_late",
        "minutes_late": 15,
    }
    assert (event.priority, event.ack_required) == ("normal", False)
