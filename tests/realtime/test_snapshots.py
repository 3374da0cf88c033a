"""The wedding snapshot through the cache: served without queries, kept current.

The cache is process-wide, so each test starts from a fresh one (``fresh_cache``).
Tests that need a real commit (an event's after-commit invalidation, a rollback) use
``transaction=True``.
"""

from __future__ import annotations

import datetime as dt
from unittest.mock import ANY

import orjson
import pytest
from django.db import connection, transaction
from django.test import Client

from core.cache import get_cache
from realtime.services import event_publish
from realtime.snapshots import snapshot_get, snapshot_invalidate, snapshot_key
from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from weddings.models import Supplier

pytestmark = [pytest.mark.timeout(30)]
COMMITS = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world():
    planner, couple, outsider = make_user(), make_user(), make_user()
    wedding = make_wedding(couple=(couple,), venue_name="Old Barn", guest_count=80)
    planner_co = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    booking = make_booking(supplier=planner_co, wedding=wedding)
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0))
    return {
        "wedding": wedding,
        "planner": planner,
        "couple": couple,
        "outsider": outsider,
        "planner_co": planner_co,
        "booking": booking,
        "item": item,
    }


def expected_snapshot(world, *, seq: int = 0, statuses: list | None = None) -> dict:
    """The snapshot of ``world`` as PROTOCOL §9 describes it, written out from the rows
    the fixture seeded (not read back through the code under test). The ceremony is at
    14:00 in London on 13 June 2026 (BST, UTC+1), 30 minutes long."""
    wedding, item, planner_co = world["wedding"], world["item"], world["planner_co"]
    return {
        "wedding": {
            "id": wedding.pk,
            "topic": f"wedding:{wedding.pk}",
            "couple": "Alex & Sam",
            "date": "2026-06-13",
            "ceremony_time": "14:00",
            "time_zone": "Europe/London",
            "venue": "Old Barn",
            "venue_address": "",
            "guest_count": 80,
            "status": "planning",
            "notes": "",
        },
        "timeline": [
            {
                "id": item.pk,
                "title": "Ceremony",
                "starts_at": "2026-06-13T13:00:00.000Z",
                "ends_at": "2026-06-13T13:30:00.000Z",
                "location": "",
                "supplier_ids": [],
                "status": "planned",
                "key_moment": False,
                "pinned": False,
                "version": 1,
            }
        ],
        "suppliers": [{"id": planner_co.pk, "name": planner_co.name, "category": "planner"}],
        "statuses": statuses or [],
        "seq": seq,
        "epoch": ANY,  # the deployment's stream epoch (tests/realtime/test_epoch.py)
    }


def _post(world, text: str = "hello"):
    return event_publish(
        topic=world["wedding"].topic,
        event="message.posted",
        payload={"text": text},
        user=world["planner"],
    )


def _cached(wedding_id: int):
    return get_cache().get(snapshot_key(wedding_id))


@pytest.mark.django_db
def test_snapshot_get__second_read_is_served_from_cache_without_queries(
    world, django_assert_num_queries
):
    # given
    wedding_id = world["wedding"].pk
    first = snapshot_get(wedding_id)

    # when
    with django_assert_num_queries(0):
        second = snapshot_get(wedding_id)

    # then
    assert second == first == expected_snapshot(world)


@COMMITS
def test_snapshot_get__stored_event_invalidates_it_after_commit(world):
    # given
    wedding_id = world["wedding"].pk
    assert snapshot_get(wedding_id)["seq"] == 0

    # when
    stored = _post(world).event

    # then
    assert _cached(wedding_id) is None
    assert stored.seq == 1
    assert snapshot_get(wedding_id) == expected_snapshot(world, seq=1)


@COMMITS
def test_snapshot_get__timeline_event_shows_in_the_next_read(world):
    # given
    wedding_id = world["wedding"].pk
    snapshot_get(wedding_id)

    # when
    event_publish(
        topic=world["wedding"].topic,
        event="timeline.item.created",
        payload={"title": "Speeches", "starts_at": "2026-06-13T18:00:00Z"},
        user=world["planner"],
    )

    # then
    state = snapshot_get(wedding_id)
    assert [item["title"] for item in state["timeline"]] == ["Ceremony", "Speeches"]
    assert state["seq"] == 1


@COMMITS
def test_snapshot_get__rolled_back_event_does_not_change_it(world):
    # given
    wedding_id = world["wedding"].pk
    before = snapshot_get(wedding_id)

    # when
    with pytest.raises(RuntimeError), transaction.atomic():
        _post(world, "never stored")
        raise RuntimeError("roll back")

    # then
    assert snapshot_get(wedding_id) == before
    assert before["seq"] == 0


def _drops_after_commit(wedding_id: int) -> int:
    """The on-commit drops of the wedding's snapshot waiting in this transaction."""
    key = snapshot_key(wedding_id)
    return sum(getattr(f, "snapshot_key", None) == key for _, f, _ in connection.run_on_commit)


@COMMITS
def test_snapshot_invalidate__one_drop_after_commit_however_many_writes(world):
    # given: a timeline publish invalidates for its item's save and for its event
    wedding_id, item = world["wedding"].pk, world["item"]

    # when
    with transaction.atomic():
        event_publish(
            topic=world["wedding"].topic,
            event="timeline.item.updated",
            payload={"id": item.pk, "version": item.version, "title": "Vows"},
            user=world["planner"],
        )
        snapshot_invalidate(wedding_id)
        drops = _drops_after_commit(wedding_id)
        inside = snapshot_get(wedding_id)  # cached from inside the transaction

    # then: one drop, which ran after the commit
    assert drops == 1
    assert inside["timeline"][0]["title"] == "Vows"
    assert _cached(wedding_id) is None
    assert snapshot_get(wedding_id)["seq"] == 1


@COMMITS
def test_snapshot_invalidate__drop_discarded_by_a_savepoint_is_registered_again(world):
    # given
    wedding_id, item = world["wedding"].pk, world["item"]
    snapshot_get(wedding_id)

    # when: the first write's savepoint rolls back (and its on-commit drop with it), a
    # second write of the wedding commits after a read cached the state in between
    with transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            snapshot_invalidate(wedding_id)
            raise RuntimeError("roll back the savepoint")
        assert _drops_after_commit(wedding_id) == 0
        item.title = "Vows"
        item.save()
        assert _drops_after_commit(wedding_id) == 1
        snapshot_get(wedding_id)

    # then
    assert _cached(wedding_id) is None
    assert [entry["title"] for entry in snapshot_get(wedding_id)["timeline"]] == ["Vows"]


@pytest.mark.django_db
def test_snapshot_get__admin_style_timeline_item_save_invalidates_it(world):
    # given: the admin writes the ORM directly, without an event
    wedding_id = world["wedding"].pk
    snapshot_get(wedding_id)
    item = world["item"]

    # when
    item.title = "Vows"
    item.save()

    # then
    assert [entry["title"] for entry in snapshot_get(wedding_id)["timeline"]] == ["Vows"]


@pytest.mark.django_db
def test_snapshot_get__domain_writes_invalidate_it(world):
    wedding, wedding_id = world["wedding"], world["wedding"].pk
    snapshot_get(wedding_id)

    wedding.guest_count = 120
    wedding.save()
    assert snapshot_get(wedding_id)["wedding"]["guest_count"] == 120

    world["planner_co"].name = "Plan It Ltd"
    world["planner_co"].save()
    assert [s["name"] for s in snapshot_get(wedding_id)["suppliers"]] == ["Plan It Ltd"]

    photo_co = make_supplier()
    world["item"].suppliers.add(photo_co)
    assert snapshot_get(wedding_id)["timeline"][0]["supplier_ids"] == [photo_co.pk]

    world["booking"].active = False
    world["booking"].save()
    assert snapshot_get(wedding_id)["suppliers"] == []

    world["item"].delete()
    assert snapshot_get(wedding_id)["timeline"] == []


@COMMITS
def test_snapshot_api__returns_the_uncached_snapshot_json_and_checks_visibility_each_time(
    world,
):
    # given a message and the planner's status on the wedding
    wedding_id = world["wedding"].pk
    _post(world)
    status = event_publish(
        topic=world["wedding"].topic,
        event="vendor.status",
        payload={"supplier_id": world["planner_co"].pk, "status": "arrived"},
        user=world["planner"],
    ).event
    path = f"/api/weddings/{wedding_id}/"
    couple = Client()
    couple.force_login(world["couple"])
    outsider = Client()
    outsider.force_login(world["outsider"])

    # when
    first = couple.get(path)
    second = couple.get(path)  # from the cache
    refused = outsider.get(path)  # the snapshot is cached, yet the check still runs

    # then
    assert first.status_code == second.status_code == 200
    expected = expected_snapshot(
        world,
        seq=2,
        statuses=[
            {
                "supplier_id": world["planner_co"].pk,
                "status": "arrived",
                "seq": 2,
                "ts": status.created_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
                + "Z",
            }
        ],
    )
    # the couple read their whole guest list (none here; docs/security.md, ADR 0026)
    expected["guests"] = {
        "guests": [],
        "tables": [],
        "totals": {"accepted": 0, "declined": 0, "pending": 0},
    }
    assert orjson.loads(first.content) == orjson.loads(second.content) == expected
    assert refused.status_code == 404
    assert orjson.loads(refused.content)["error"]["code"] == "not_found"
