"""The domain's writes: validation, optimistic versions, shifts, bookings."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connections, transaction

from tests.factories import local_dt, make_booking, make_item, make_supplier, make_wedding
from weddings.models import Booking, TimelineItem, Wedding
from weddings.selectors import timeline_item_as_dict
from weddings.services import (
    Conflict,
    timeline_item_create,
    timeline_item_delete,
    timeline_item_update,
    timeline_shift,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def wedding():
    return make_wedding()


@pytest.fixture
def booked(wedding):
    """A supplier with an active booking on ``wedding``."""
    supplier = make_supplier()
    make_booking(supplier=supplier, wedding=wedding)
    return supplier


def _starts(wedding, *items) -> list[tuple[int, int]]:
    """Local (hour, minute) of each item as stored now."""
    result = []
    for item in items:
        item.refresh_from_db()
        local = item.starts_at.astimezone(wedding.zone)
        result.append((local.hour, local.minute))
    return result


# --- create -------------------------------------------------------------------------------


def test_create__stores_item_at_version_one(wedding, booked):
    # when
    item = timeline_item_create(
        wedding_id=wedding.pk,
        title="  Ceremony  ",
        starts_at=local_dt(wedding, 14),
        ends_at=local_dt(wedding, 14, 45),
        location="Chapel",
        supplier_ids=[booked.pk],
        key_moment=True,
    )

    # then
    stored = TimelineItem.objects.get(pk=item.pk)
    assert stored.version == 1
    assert stored.title == "Ceremony"
    assert stored.wedding_id == wedding.pk
    assert stored.key_moment is True
    assert stored.pinned is False
    assert stored.status == "planned"
    assert list(stored.suppliers.values_list("pk", flat=True)) == [booked.pk]


def test_create__returns_item_payload_in_utc(wedding, booked, django_assert_num_queries):
    # given (London is on UTC+1 in June)
    item = timeline_item_create(
        wedding_id=wedding.pk,
        title="Ceremony",
        starts_at=local_dt(wedding, 14),
        supplier_ids=[booked.pk],
    )

    # when: the suppliers came prefetched, so the payload needs no query
    with django_assert_num_queries(0):
        payload = timeline_item_as_dict(item)

    # then
    assert payload == {
        "id": item.pk,
        "title": "Ceremony",
        "starts_at": "2026-06-13T13:00:00.000Z",
        "ends_at": None,
        "location": "",
        "supplier_ids": [booked.pk],
        "status": "planned",
        "key_moment": False,
        "pinned": False,
        "version": 1,
    }


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("title", {"title": "   "}),
        ("title", {"title": ""}),
        ("title", {"title": "x" * 201}),
        ("title", {"title": None}),
        ("starts_at", {"starts_at": dt.datetime(2026, 6, 13, 14, 0)}),  # naive
        ("starts_at", {"starts_at": "2026-06-13T14:00:00Z"}),
        ("ends_at", {"ends_at": dt.datetime(2026, 6, 13, 15, 0)}),  # naive
        ("ends_at", {"ends_at": dt.datetime(2026, 6, 13, 12, 59, tzinfo=dt.UTC)}),
        ("status", {"status": "postponed"}),
        ("location", {"location": "x" * 201}),
        ("key_moment", {"key_moment": "yes"}),
        ("pinned", {"pinned": 1}),
        ("supplier_ids", {"supplier_ids": ["1"]}),
        ("supplier_ids", {"supplier_ids": "12"}),
        ("supplier_ids", {"supplier_ids": 12}),
        ("supplier_ids", {"supplier_ids": [True]}),
    ],
)
def test_create__rejects_bad_field_and_stores_nothing(wedding, field, kwargs):
    # given
    arguments = {"wedding_id": wedding.pk, "title": "Ceremony", "starts_at": local_dt(wedding, 14)}
    arguments.update(kwargs)

    # when
    with pytest.raises(ValidationError) as caught:
        timeline_item_create(**arguments)

    # then
    assert set(caught.value.message_dict) == {field}
    assert not TimelineItem.objects.exists()


def test_create__accepts_supplier_ids_from_a_generator(wedding, booked):
    item = timeline_item_create(
        wedding_id=wedding.pk,
        title="Ceremony",
        starts_at=local_dt(wedding, 14),
        supplier_ids=(supplier.pk for supplier in [booked]),
    )

    assert timeline_item_as_dict(item)["supplier_ids"] == [booked.pk]


def test_create__names_every_bad_field_at_once(wedding):
    with pytest.raises(ValidationError) as caught:
        timeline_item_create(
            wedding_id=wedding.pk, title="", starts_at=local_dt(wedding, 14), status="nope"
        )

    assert set(caught.value.message_dict) == {"title", "status"}


def test_create__accepts_end_equal_to_start(wedding):
    item = timeline_item_create(
        wedding_id=wedding.pk,
        title="Sunset photos",
        starts_at=local_dt(wedding, 20),
        ends_at=local_dt(wedding, 20),
    )

    assert item.ends_at == item.starts_at


def test_create__rejects_supplier_without_active_booking(wedding, booked):
    # given: one supplier booked elsewhere, one whose booking here ended
    elsewhere = make_supplier()
    make_booking(supplier=elsewhere, wedding=make_wedding())
    former = make_supplier()
    make_booking(supplier=former, wedding=wedding, active=False)

    for supplier in (elsewhere, former):
        # when
        with pytest.raises(ValidationError) as caught:
            timeline_item_create(
                wedding_id=wedding.pk,
                title="Ceremony",
                starts_at=local_dt(wedding, 14),
                supplier_ids=[booked.pk, supplier.pk],
            )

        # then
        assert set(caught.value.message_dict) == {"supplier_ids"}
        assert str(supplier.pk) in caught.value.message_dict["supplier_ids"][0]
    assert not TimelineItem.objects.exists()


def test_create__unknown_wedding_raises_does_not_exist(wedding):
    with pytest.raises(Wedding.DoesNotExist):
        timeline_item_create(
            wedding_id=wedding.pk + 1000, title="Ceremony", starts_at=local_dt(wedding, 14)
        )


# --- update -------------------------------------------------------------------------------


def test_update__with_current_version_applies_and_bumps_version(wedding, booked):
    # given
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))

    # when
    updated = timeline_item_update(
        item_id=item.pk,
        expected_version=1,
        title="Vows",
        status="in_progress",
        supplier_ids=[booked.pk],
        pinned=True,
    )

    # then
    item.refresh_from_db()
    assert updated.version == item.version == 2
    assert (item.title, item.status, item.pinned) == ("Vows", "in_progress", True)
    assert list(item.suppliers.values_list("pk", flat=True)) == [booked.pk]
    assert timeline_item_as_dict(updated)["supplier_ids"] == [booked.pk]


def test_update__twice_counts_versions(wedding):
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))

    timeline_item_update(item_id=item.pk, expected_version=1, title="A")
    timeline_item_update(item_id=item.pk, expected_version=2, title="B")

    item.refresh_from_db()
    assert (item.title, item.version) == ("B", 3)


def test_update__stale_version_raises_conflict_with_current_item_and_changes_nothing(wedding):
    # given: someone else already moved the item to version 2
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))
    timeline_item_update(item_id=item.pk, expected_version=1, title="Vows")

    # when
    with pytest.raises(Conflict) as caught:
        timeline_item_update(item_id=item.pk, expected_version=1, title="Stale edit")

    # then
    assert caught.value.current.pk == item.pk
    assert caught.value.current.version == 2
    assert caught.value.current.title == "Vows"
    item.refresh_from_db()
    assert (item.title, item.version) == ("Vows", 2)


def test_update__future_version_is_a_conflict_too(wedding):
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))

    with pytest.raises(Conflict):
        timeline_item_update(item_id=item.pk, expected_version=5, title="Vows")

    item.refresh_from_db()
    assert (item.title, item.version) == ("Ceremony", 1)


def test_update__unknown_field_is_rejected(wedding):
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))

    with pytest.raises(ValidationError) as caught:
        timeline_item_update(item_id=item.pk, expected_version=1, title="Vows", version=9)

    assert set(caught.value.message_dict) == {"version"}
    item.refresh_from_db()
    assert (item.title, item.version) == ("Ceremony", 1)


def test_update__invalid_value_is_rejected_and_version_kept(wedding):
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0), minutes=30)

    # when: a new start after the stored end
    with pytest.raises(ValidationError) as caught:
        timeline_item_update(item_id=item.pk, expected_version=1, starts_at=local_dt(wedding, 15))

    # then
    assert set(caught.value.message_dict) == {"starts_at"}
    item.refresh_from_db()
    assert item.version == 1
    assert _starts(wedding, item) == [(14, 0)]


def test_update__rejects_unbooked_supplier(wedding):
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))
    stranger = make_supplier()

    with pytest.raises(ValidationError) as caught:
        timeline_item_update(item_id=item.pk, expected_version=1, supplier_ids=[stranger.pk])

    assert set(caught.value.message_dict) == {"supplier_ids"}
    assert not item.suppliers.exists()


def test_update__keeps_suppliers_whose_booking_ended_when_not_named(wedding, booked):
    # given: an item with a supplier whose booking has since been deactivated
    item = timeline_item_create(
        wedding_id=wedding.pk,
        title="Ceremony",
        starts_at=local_dt(wedding, 14),
        supplier_ids=[booked.pk],
    )
    booking = Booking.objects.get(supplier=booked, wedding=wedding)
    booking.active = False
    booking.save()

    # when
    updated = timeline_item_update(item_id=item.pk, expected_version=1, title="Vows")

    # then
    assert timeline_item_as_dict(updated)["supplier_ids"] == [booked.pk]


def test_update__inside_outer_transaction_rolls_back_with_it(wedding):
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))

    with pytest.raises(RuntimeError), transaction.atomic():
        timeline_item_update(item_id=item.pk, expected_version=1, title="Vows")
        raise RuntimeError("the event log failed")

    item.refresh_from_db()
    assert (item.title, item.version) == ("Ceremony", 1)


# --- delete -------------------------------------------------------------------------------


def test_delete__returns_item_as_it_was(wedding, booked):
    # given
    item = timeline_item_create(
        wedding_id=wedding.pk,
        title="Ceremony",
        starts_at=local_dt(wedding, 14),
        supplier_ids=[booked.pk],
    )
    before = timeline_item_as_dict(item)

    # when
    deleted = timeline_item_delete(item_id=item.pk, expected_version=1)

    # then
    assert timeline_item_as_dict(deleted) == before
    assert not TimelineItem.objects.filter(pk=item.pk).exists()


def test_delete__stale_version_raises_conflict_and_keeps_item(wedding):
    # given
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))
    timeline_item_update(item_id=item.pk, expected_version=1, title="Vows")

    # when
    with pytest.raises(Conflict) as caught:
        timeline_item_delete(item_id=item.pk, expected_version=1)

    # then
    assert caught.value.current.version == 2
    assert TimelineItem.objects.filter(pk=item.pk, version=2).exists()


# --- shift --------------------------------------------------------------------------------


@pytest.fixture
def day(wedding):
    """A running order: prep 12:00, ceremony 14:00, sunset (pinned) 15:00, dinner 16:00."""
    return {
        "prep": make_item(wedding=wedding, title="Prep", start=(12, 0)),
        "ceremony": make_item(wedding=wedding, title="Ceremony", start=(14, 0)),
        "sunset": make_item(wedding=wedding, title="Sunset", start=(15, 0), pinned=True),
        "dinner": make_item(wedding=wedding, title="Dinner", start=(16, 0)),
    }


def test_shift__moves_origin_and_later_unpinned_items(wedding, day):
    # when
    moved = timeline_shift(item_id=day["ceremony"].pk, minutes=20)

    # then
    assert [item.title for item in moved] == ["Ceremony", "Dinner"]
    assert _starts(wedding, day["ceremony"], day["dinner"]) == [(14, 20), (16, 20)]
    for name in ("ceremony", "dinner"):
        item = day[name]
        assert item.ends_at - item.starts_at == dt.timedelta(minutes=30)


def test_shift__leaves_pinned_and_earlier_items_in_place(wedding, day):
    timeline_shift(item_id=day["ceremony"].pk, minutes=20)

    assert _starts(wedding, day["prep"], day["sunset"]) == [(12, 0), (15, 0)]


def test_shift__bumps_versions_of_moved_items_only(wedding, day):
    timeline_shift(item_id=day["ceremony"].pk, minutes=20)

    versions = {}
    for name, item in day.items():
        item.refresh_from_db()
        versions[name] = item.version
    assert versions == {"prep": 1, "ceremony": 2, "sunset": 1, "dinner": 2}


def test_shift__moves_items_starting_at_the_same_time(wedding, day):
    # given
    toast = make_item(wedding=wedding, title="Toast", start=(14, 0))

    # when
    moved = timeline_shift(item_id=day["ceremony"].pk, minutes=15)

    # then
    assert {item.title for item in moved} == {"Ceremony", "Toast", "Dinner"}
    assert _starts(wedding, toast) == [(14, 15)]


def test_shift__from_pinned_origin_moves_only_later_unpinned_items(wedding, day):
    # when
    moved = timeline_shift(item_id=day["sunset"].pk, minutes=10)

    # then
    assert [item.title for item in moved] == ["Dinner"]
    assert _starts(wedding, day["sunset"], day["dinner"]) == [(15, 0), (16, 10)]


def test_shift__negative_minutes_moves_earlier(wedding, day):
    moved = timeline_shift(item_id=day["ceremony"].pk, minutes=-45)

    assert [item.title for item in moved] == ["Ceremony", "Dinner"]
    assert _starts(wedding, *day.values()) == [(12, 0), (13, 15), (15, 0), (15, 15)]


def test_shift__returns_items_in_timeline_order(wedding, day):
    # given: dinner was created before a 14:30 speech, so id order differs
    speech = make_item(wedding=wedding, title="Speech", start=(14, 30))

    # when
    moved = timeline_shift(item_id=day["ceremony"].pk, minutes=5)

    # then
    assert [item.pk for item in moved] == [day["ceremony"].pk, speech.pk, day["dinner"].pk]
    assert [timeline_item_as_dict(item)["version"] for item in moved] == [2, 2, 2]


def test_shift__leaves_other_weddings_alone(wedding, day):
    other = make_wedding()
    theirs = make_item(wedding=other, title="Their dinner", start=(16, 0))

    timeline_shift(item_id=day["ceremony"].pk, minutes=20)

    theirs.refresh_from_db()
    assert theirs.version == 1
    assert _starts(other, theirs) == [(16, 0)]


def test_shift__returns_each_moved_item_with_its_own_suppliers(wedding, day, booked):
    # given: suppliers on some items only
    other = make_supplier()
    make_booking(supplier=other, wedding=wedding)
    day["ceremony"].suppliers.set([booked, other])
    day["dinner"].suppliers.set([other])

    # when
    moved = timeline_shift(item_id=day["prep"].pk, minutes=10)

    # then
    assert {timeline_item_as_dict(item)["title"]: timeline_item_as_dict(item)["supplier_ids"]
            for item in moved} == {
        "Prep": [],
        "Ceremony": sorted([booked.pk, other.pk]),
        "Dinner": [other.pk],
    }  # fmt: skip


@pytest.mark.parametrize("service", ["update", "delete", "shift"])
def test_item_services__with_a_wedding__an_item_of_another_is_missing(wedding, day, service):
    # given
    theirs = make_item(wedding=make_wedding(), title="Their vows", start=(14, 0))
    call = {
        "update": lambda: timeline_item_update(
            item_id=theirs.pk, expected_version=1, wedding_id=wedding.pk, title="Mine"
        ),
        "delete": lambda: timeline_item_delete(
            item_id=theirs.pk, expected_version=1, wedding_id=wedding.pk
        ),
        "shift": lambda: timeline_shift(item_id=theirs.pk, minutes=20, wedding_id=wedding.pk),
    }[service]

    # when / then
    with pytest.raises(TimelineItem.DoesNotExist):
        call()
    theirs.refresh_from_db()
    assert (theirs.title, theirs.version, theirs.starts_at.minute) == ("Their vows", 1, 0)
    assert [item.version for item in TimelineItem.objects.filter(wedding=wedding)] == [1] * 4


def test_shift__moves_item_without_end(wedding):
    item = TimelineItem.objects.create(
        wedding=wedding, title="Open bar", starts_at=local_dt(wedding, 18)
    )

    timeline_shift(item_id=item.pk, minutes=30)

    item.refresh_from_db()
    assert item.ends_at is None
    assert _starts(wedding, item) == [(18, 30)]


@pytest.mark.parametrize("minutes", [0, 1441, -1441, 1.5, "10", True, None])
def test_shift__rejects_bad_minutes(wedding, day, minutes):
    with pytest.raises(ValidationError) as caught:
        timeline_shift(item_id=day["ceremony"].pk, minutes=minutes)

    assert set(caught.value.message_dict) == {"minutes"}
    assert _starts(wedding, *day.values()) == [(12, 0), (14, 0), (15, 0), (16, 0)]


@pytest.mark.parametrize("minutes", [1440, -1440])
def test_shift__accepts_a_whole_day(wedding, day, minutes):
    moved = timeline_shift(item_id=day["dinner"].pk, minutes=minutes)

    assert moved[0].starts_at - day["dinner"].starts_at == dt.timedelta(minutes=minutes)


def test_shift__stale_expected_version_raises_conflict_and_moves_nothing(wedding, day):
    # given
    timeline_item_update(item_id=day["ceremony"].pk, expected_version=1, title="Vows")

    # when
    with pytest.raises(Conflict) as caught:
        timeline_shift(item_id=day["ceremony"].pk, minutes=20, expected_version=1)

    # then
    assert caught.value.current.version == 2
    assert _starts(wedding, *day.values()) == [(12, 0), (14, 0), (15, 0), (16, 0)]


def test_shift__current_expected_version_moves(wedding, day):
    moved = timeline_shift(item_id=day["ceremony"].pk, minutes=20, expected_version=1)

    assert [item.version for item in moved] == [2, 2]


# --- bookings -----------------------------------------------------------------------------


# --- concurrency (PostgreSQL row locks) ---------------------------------------------------


def _run_in_thread(target, results: list, index: int) -> threading.Thread:
    def run() -> None:
        try:
            results[index] = target()
        except Exception as error:
            results[index] = error
        finally:
            connections.close_all()

    return threading.Thread(target=run, daemon=True)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_update__concurrent_same_version__exactly_one_wins():
    # given
    wedding = make_wedding()
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))
    start = threading.Barrier(2, timeout=10)
    results: list = [None, None]

    def update(title: str):
        def call():
            start.wait()
            return timeline_item_update(item_id=item.pk, expected_version=1, title=title)

        return call

    threads = [_run_in_thread(update(title), results, i) for i, title in enumerate("AB")]

    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    # then
    assert sum(isinstance(result, TimelineItem) for result in results) == 1, results
    assert sum(isinstance(result, Conflict) for result in results) == 1, results
    item.refresh_from_db()
    assert item.version == 2
    winner = next(result for result in results if isinstance(result, TimelineItem))
    assert item.title == winner.title


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_update__waits_for_open_transaction_then_conflicts():
    # given: thread A updates inside a transaction it keeps open for a moment
    wedding = make_wedding()
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))
    a_updated, b_started = threading.Event(), threading.Event()
    results: list = [None, None]

    def first():
        with transaction.atomic():
            updated = timeline_item_update(item_id=item.pk, expected_version=1, title="A")
            a_updated.set()
            b_started.wait(timeout=10)
            threading.Event().wait(0.3)  # B now blocks on the row lock (or reads too early)
        return updated

    def second():
        a_updated.wait(timeout=10)
        b_started.set()
        return timeline_item_update(item_id=item.pk, expected_version=1, title="B")

    threads = [_run_in_thread(first, results, 0), _run_in_thread(second, results, 1)]

    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    # then: B saw A's committed version, not the one before it
    assert isinstance(results[0], TimelineItem), results
    assert isinstance(results[1], Conflict), results
    assert results[1].current.version == 2
    assert results[1].current.title == "A"
    item.refresh_from_db()
    assert (item.title, item.version) == ("A", 2)
