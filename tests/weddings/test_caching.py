"""Cached domain reads: a user's access and supplier profiles, and what invalidates them."""

from __future__ import annotations

import pytest

from core.cache import get_cache
from realtime import signals
from realtime.access import still_allowed
from realtime.errors import RealtimeError
from realtime.topics import authorize_subscribe
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from weddings.caching import access_key, supplier_profile, user_access, user_access_load
from weddings.models import SupplierMembership

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(30)]


@pytest.fixture
def world():
    vendor, couple = make_user(), make_user()
    wedding = make_wedding(couple=(couple,))
    supplier = make_supplier(users=(vendor,))
    booking = make_booking(supplier=supplier, wedding=wedding)
    return {
        "vendor": vendor,
        "couple": couple,
        "wedding": wedding,
        "supplier": supplier,
        "booking": booking,
    }


def _allowed(user, topic: str) -> bool:
    try:
        authorize_subscribe(user, topic)
    except RealtimeError as err:
        assert err.code == "forbidden"
        return False
    return True


def test_user_access__lists_weddings_and_suppliers_and_is_cached(world, django_assert_num_queries):
    # given
    vendor = world["vendor"]
    first = user_access(vendor.pk)

    # when
    with django_assert_num_queries(0):
        second = user_access(vendor.pk)
        allowed = _allowed(vendor, world["wedding"].topic)

    # then
    assert (
        second
        == first
        == {
            "active": True,
            "staff": False,
            "weddings": [world["wedding"].pk],
            "suppliers": [world["supplier"].pk],
        }
    )
    assert allowed


def test_user_access__missing_user_is_inactive():
    assert user_access_load(987_654_321) == {
        "active": False,
        "staff": False,
        "weddings": [],
        "suppliers": [],
    }


def test_subscribe__refused_right_after_the_booking_is_deactivated(world):
    # given
    vendor, topic = world["vendor"], world["wedding"].topic
    assert _allowed(vendor, topic)

    # when
    world["booking"].active = False
    world["booking"].save()

    # then
    assert not _allowed(vendor, topic)
    assert _allowed(vendor, f"supplier:{world['supplier'].pk}")  # still a member


def test_subscribe__refused_right_after_the_booking_is_deleted(world):
    vendor, topic = world["vendor"], world["wedding"].topic
    assert _allowed(vendor, topic)

    world["booking"].delete()

    assert not _allowed(vendor, topic)


def test_subscribe__new_booking_grants_access_at_once(world):
    vendor = world["vendor"]
    other = make_wedding(partner_one="Jo", partner_two="Kim")
    assert not _allowed(vendor, other.topic)

    make_booking(supplier=world["supplier"], wedding=other)

    assert _allowed(vendor, other.topic)


def test_subscribe__refused_right_after_the_membership_is_removed(world):
    # given
    vendor, supplier = world["vendor"], world["supplier"]
    assert _allowed(vendor, f"supplier:{supplier.pk}")
    assert _allowed(vendor, world["wedding"].topic)

    # when
    SupplierMembership.objects.get(user=vendor, supplier=supplier).delete()

    # then
    assert not _allowed(vendor, f"supplier:{supplier.pk}")
    assert not _allowed(vendor, world["wedding"].topic)


def test_subscribe__follows_couple_changes_from_either_side(world):
    couple, wedding = world["couple"], world["wedding"]
    assert _allowed(couple, wedding.topic)

    wedding.couple.remove(couple)
    assert not _allowed(couple, wedding.topic)

    couple.couple_weddings.add(wedding)
    assert _allowed(couple, wedding.topic)

    wedding.couple.clear()
    assert not _allowed(couple, wedding.topic)


def test_subscribe__deactivated_user_is_refused_at_once(world):
    vendor = world["vendor"]
    assert _allowed(vendor, world["wedding"].topic)

    vendor.is_active = False
    vendor.save()

    assert user_access(vendor.pk)["active"] is False
    assert not _allowed(vendor, world["wedding"].topic)


def test_recheck_and_ack__read_the_database_not_the_cache(world):
    # given: a change the signals never see (QuerySet.update), so the cache is stale
    vendor, topic = world["vendor"], world["wedding"].topic
    assert _allowed(vendor, topic)
    world["wedding"].bookings.update(active=False)
    assert _allowed(vendor, topic)  # the documented staleness of signal-less writes

    # when / then
    assert still_allowed(vendor.pk, topic) is False
    with pytest.raises(RealtimeError):
        authorize_subscribe(vendor, topic, cached=False)


def test_recheck__is_sent_after_the_access_cache_is_dropped(
    world, monkeypatch, django_capture_on_commit_callbacks
):
    # given: a stale entry written back into the cache before the commit
    vendor = world["vendor"]
    seen: list[object] = []

    async def record(group, message):
        seen.append(get_cache().get(access_key(vendor.pk)))

    monkeypatch.setattr(signals, "group_send_bounded", record)

    # when
    with django_capture_on_commit_callbacks(execute=True):
        world["booking"].active = False
        world["booking"].save()
        get_cache().set(access_key(vendor.pk), {"stale": True})

    # then: when rt.recheck went out the entry was gone
    assert seen == [None]


def test_supplier_profile__cached_and_invalidated_by_a_save(world, django_assert_num_queries):
    # given
    supplier = world["supplier"]
    profile = supplier_profile(supplier.pk)
    with django_assert_num_queries(0):
        assert supplier_profile(supplier.pk) == profile
    assert profile["name"] == supplier.name

    # when
    supplier.name = "Lens & Light"
    supplier.save()

    # then
    assert supplier_profile(supplier.pk)["name"] == "Lens & Light"
