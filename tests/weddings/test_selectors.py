"""Who sees and edits which wedding, and the timeline read."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser

from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from weddings.models import Supplier, SupplierMembership
from weddings.selectors import (
    active_supplier_ids,
    timeline_for_wedding,
    timeline_item_as_dict,
    user_can_edit_timeline,
    user_can_view_wedding,
    user_supplier_ids,
    weddings_visible_to,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    """Two weddings, their couples, and vendors with active, inactive or other bookings."""
    partner = make_user()
    wedding = make_wedding(couple=(partner,))
    other_partner = make_user()
    other = make_wedding(couple=(other_partner,))

    booked_vendor = make_user()
    make_booking(supplier=make_supplier(users=(booked_vendor,)), wedding=wedding)
    former_vendor = make_user()
    make_booking(supplier=make_supplier(users=(former_vendor,)), wedding=wedding, active=False)
    other_vendor = make_user()
    make_booking(supplier=make_supplier(users=(other_vendor,)), wedding=other)
    return {
        "wedding": wedding,
        "other": other,
        "partner": partner,
        "other_partner": other_partner,
        "booked_vendor": booked_vendor,
        "former_vendor": former_vendor,
        "other_vendor": other_vendor,
        "staff": make_user(is_staff=True),
        "nobody": make_user(),
    }


@pytest.mark.parametrize(
    ("who", "sees"),
    [
        ("booked_vendor", {"wedding"}),
        ("former_vendor", set()),
        ("other_vendor", {"other"}),
        ("partner", {"wedding"}),
        ("other_partner", {"other"}),
        ("staff", {"wedding", "other"}),
        ("nobody", set()),
    ],
)
def test_visibility__matrix(world, who, sees):
    user = world[who]
    expected = {world[name].pk for name in sees}

    assert {wedding.pk for wedding in weddings_visible_to(user)} == expected
    for name in ("wedding", "other"):
        assert user_can_view_wedding(user, world[name].pk) is (world[name].pk in expected)


@pytest.mark.parametrize("who", ["booked_vendor", "partner", "staff"])
def test_visibility__inactive_user_sees_nothing(world, who):
    # given
    user = world[who]
    user.is_active = False
    user.save()

    # then
    assert not weddings_visible_to(user).exists()
    assert user_can_view_wedding(user, world["wedding"].pk) is False
    assert user_can_edit_timeline(user, world["wedding"].pk) is False
    assert user_supplier_ids(user) == set()


def test_visibility__anonymous_user_sees_nothing(world):
    anonymous = AnonymousUser()

    assert not weddings_visible_to(anonymous).exists()
    assert user_can_view_wedding(anonymous, world["wedding"].pk) is False
    assert user_can_edit_timeline(anonymous, world["wedding"].pk) is False
    assert user_supplier_ids(anonymous) == set()


@pytest.mark.parametrize("who", ["booked_vendor", "partner", "staff", "nobody"])
def test_visibility__nonexistent_wedding_is_false(world, who):
    missing = world["other"].pk + 1000

    assert user_can_view_wedding(world[who], missing) is False
    assert user_can_edit_timeline(world[who], missing) is False


def test_visibility__lists_each_wedding_once(world):
    # given: the vendor is also in the couple, and works for a second booked supplier
    user, wedding = world["booked_vendor"], world["wedding"]
    wedding.couple.add(user)
    make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)

    # when
    visible = list(weddings_visible_to(user))

    # then
    assert [w.pk for w in visible] == [wedding.pk]


def test_visibility__deactivated_booking_revokes_access(world):
    # given
    user, wedding = world["booked_vendor"], world["wedding"]
    assert user_can_view_wedding(user, wedding.pk)

    # when
    wedding.bookings.update(active=False)

    # then
    assert user_can_view_wedding(user, wedding.pk) is False


def test_user_supplier_ids__lists_memberships(world):
    user = world["booked_vendor"]
    second = make_supplier(users=(user,))

    ids = user_supplier_ids(user)

    assert second.pk in ids
    assert len(ids) == 2
    assert user_supplier_ids(world["partner"]) == set()


# --- edit rights --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "role", "active", "can_edit"),
    [
        (Supplier.Category.PLANNER, SupplierMembership.Role.MEMBER, True, True),
        (Supplier.Category.PHOTOGRAPHER, SupplierMembership.Role.COORDINATOR, True, True),
        (Supplier.Category.PHOTOGRAPHER, SupplierMembership.Role.MEMBER, True, False),
        (Supplier.Category.PHOTOGRAPHER, SupplierMembership.Role.OWNER, True, False),
        (Supplier.Category.PLANNER, SupplierMembership.Role.MEMBER, False, False),
        (Supplier.Category.VENUE, SupplierMembership.Role.COORDINATOR, False, False),
    ],
)
def test_edit_rights__by_category_role_and_booking(category, role, active, can_edit):
    # given
    user = make_user()
    wedding = make_wedding()
    make_booking(
        supplier=make_supplier(category=category, users=(user,), role=role),
        wedding=wedding,
        active=active,
    )

    # then
    assert user_can_edit_timeline(user, wedding.pk) is can_edit


def test_edit_rights__planner_of_another_wedding_cannot_edit(world):
    user = make_user()
    planner = make_supplier(category=Supplier.Category.PLANNER, users=(user,))
    make_booking(supplier=planner, wedding=world["other"])

    assert user_can_edit_timeline(user, world["other"].pk) is True
    assert user_can_edit_timeline(user, world["wedding"].pk) is False


def test_edit_rights__ended_booking_here_is_not_saved_by_active_one_elsewhere(world):
    # given: a planner whose booking here ended, still booked on the other wedding
    user, wedding = make_user(), world["wedding"]
    planner = make_supplier(category=Supplier.Category.PLANNER, users=(user,))
    make_booking(supplier=planner, wedding=wedding, active=False)
    make_booking(supplier=planner, wedding=world["other"])

    # then
    assert user_can_edit_timeline(user, wedding.pk) is False
    assert user_can_view_wedding(user, wedding.pk) is False


def test_edit_rights__coordinator_role_elsewhere_does_not_count(world):
    # given: coordinator of a supplier booked on the other wedding, plain member of one
    # booked here
    user, wedding = make_user(), world["wedding"]
    coordinating = make_supplier(users=(user,), role=SupplierMembership.Role.COORDINATOR)
    make_booking(supplier=coordinating, wedding=world["other"])
    make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)

    # then
    assert user_can_view_wedding(user, wedding.pk) is True
    assert user_can_edit_timeline(user, wedding.pk) is False


def test_edit_rights__staff_yes_couple_no(world):
    assert user_can_edit_timeline(world["staff"], world["wedding"].pk) is True
    assert user_can_edit_timeline(world["partner"], world["wedding"].pk) is False


# --- timeline and suppliers ----------------------------------------------------------------


def test_timeline_for_wedding__in_running_order_with_own_items_only(world):
    # given
    wedding = world["wedding"]
    dinner = make_item(wedding=wedding, title="Dinner", start=(18, 0))
    ceremony = make_item(wedding=wedding, title="Ceremony", start=(14, 0))
    make_item(wedding=world["other"], title="Elsewhere", start=(15, 0))

    # then
    assert [item.pk for item in timeline_for_wedding(wedding.pk)] == [ceremony.pk, dinner.pk]


def test_active_supplier_ids__only_active_bookings(world):
    wedding = world["wedding"]
    expected = {b.supplier_id for b in wedding.bookings.filter(active=True)}

    assert active_supplier_ids(wedding.pk) == expected
    assert len(expected) == 1


# --- query counts -------------------------------------------------------------------------


def test_weddings_visible_to__one_query_however_many_weddings(world, django_assert_num_queries):
    # given: many weddings, reached through couple and several suppliers
    user = world["booked_vendor"]
    for _ in range(5):
        wedding = make_wedding(couple=(user,))
        make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)

    # when / then
    with django_assert_num_queries(1):
        assert len(list(weddings_visible_to(user))) == 6


def test_timeline_for_wedding__two_queries_with_payloads(world, django_assert_max_num_queries):
    # given: items with several suppliers each
    wedding = world["wedding"]
    suppliers = [make_supplier() for _ in range(3)]
    for hour in range(10, 20):
        item = make_item(wedding=wedding, title=f"Item {hour}", start=(hour, 0))
        item.suppliers.set(suppliers)

    bare = make_item(wedding=wedding, title="No one", start=(21, 0))

    # when / then: the ids from the link table, no supplier row read (a snapshot rebuilt
    # after each timeline change paid for whole supplier models)
    with django_assert_max_num_queries(2) as queries:
        payloads = [timeline_item_as_dict(item) for item in timeline_for_wedding(wedding.pk)]
    assert len(payloads) == 11
    assert payloads[0]["supplier_ids"] == sorted(s.pk for s in suppliers)
    assert [p["supplier_ids"] for p in payloads if p["id"] == bare.pk] == [[]]
    supplier_table = f'"{Supplier._meta.db_table}"'
    assert not [q for q in queries.captured_queries if supplier_table in q["sql"]]


def test_timeline_item_as_dict__utc_z_times(world):
    # given: 14:00 in New York (UTC-4 in June)
    wedding = make_wedding(time_zone="America/New_York")
    item = make_item(wedding=wedding, title="Ceremony", start=(14, 0), minutes=45)

    payload = timeline_item_as_dict(item)

    assert payload["starts_at"] == "2026-06-13T18:00:00.000Z"
    assert payload["ends_at"] == "2026-06-13T18:45:00.000Z"
