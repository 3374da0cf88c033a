"""Guests (ADR 0026): the services' validation and cap, the admin, the cached guest rows and
their invalidation, the view each role gets of them, and the demo's guests."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from core.cache import get_cache
from tests.factories import make_supplier, make_user, make_wedding
from weddings import roles, services
from weddings.caching import (
    coordinator_key,
    guests_key,
    user_coordinator_of,
    wedding_guests,
)
from weddings.demo import seed_demo
from weddings.models import MAX_GUESTS_PER_WEDDING, Guest, SupplierMembership, Wedding
from weddings.selectors import guest_view, guests_visible

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(30)]


def _full(wedding: Wedding, count: int = MAX_GUESTS_PER_WEDDING) -> None:
    Guest.objects.bulk_create(Guest(wedding=wedding, name=f"Guest {i}") for i in range(count))


# --- services ---------------------------------------------------------------------------


def test_guest_create__stores_a_stripped_guest():
    wedding = make_wedding()

    guest = services.guest_create(
        wedding_id=wedding.pk, name="  Ann Archer ", rsvp="accepted", diet="vegan", table=" 4 "
    )

    guest.refresh_from_db()
    assert (guest.name, guest.rsvp, guest.diet, guest.table) == (
        "Ann Archer",
        "accepted",
        "vegan",
        "4",
    )


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"name": " "}, "name", "Enter the guest's name."),
        ({"name": "x" * 121}, "name", "At most 120 characters."),
        ({"name": 7}, "name", "Enter the guest's name."),
        ({"rsvp": "maybe"}, "rsvp", "One of: pending, accepted, declined."),
        ({"diet": "carnivore"}, "diet", "One of: none, vegetarian"),
        ({"dietary_note": "n" * 201}, "dietary_note", "At most 200 characters."),
        ({"table": "t" * 41}, "table", "At most 40 characters."),
    ],
)
def test_guest_create__bad_input_names_the_field_and_stores_nothing(fields, field, message):
    wedding = make_wedding()

    with pytest.raises(ValidationError) as caught:
        services.guest_create(wedding_id=wedding.pk, **{"name": "Ann", **fields})

    assert caught.value.message_dict[field][0].startswith(message)
    assert not Guest.objects.exists()


def test_guest_create__refused_past_the_cap_with_a_clear_error():
    # given a wedding with the most guests one may have
    wedding = make_wedding()
    _full(wedding)

    # when
    with pytest.raises(ValidationError) as caught:
        services.guest_create(wedding_id=wedding.pk, name="One too many")

    # then
    assert caught.value.message_dict["wedding"] == [
        f"This wedding has {MAX_GUESTS_PER_WEDDING} guests, the most one wedding may have "
        f"({MAX_GUESTS_PER_WEDDING})."
    ]
    assert Guest.objects.filter(wedding=wedding).count() == MAX_GUESTS_PER_WEDDING


def test_guest_create__of_a_missing_wedding_raises_does_not_exist():
    with pytest.raises(Wedding.DoesNotExist):
        services.guest_create(wedding_id=987_654_321, name="Ann")


def test_guest_update__changes_only_known_fields():
    guest = services.guest_create(wedding_id=make_wedding().pk, name="Ann")

    with pytest.raises(ValidationError) as caught:
        services.guest_update(guest_id=guest.pk, wedding_id=3)
    updated = services.guest_update(guest_id=guest.pk, rsvp="declined", dietary_note="")

    assert caught.value.message_dict == {"wedding_id": ["Not a field of a guest."]}
    assert Guest.objects.get(pk=updated.pk).rsvp == "declined"


# --- admin ------------------------------------------------------------------------------


@pytest.fixture
def staff_client() -> Client:
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    client.force_login(make_user(is_staff=True, is_superuser=True))
    return client


def test_admin__lists_filters_and_searches_guests(staff_client):
    wedding = make_wedding()
    services.guest_create(wedding_id=wedding.pk, name="Ann Archer", rsvp="accepted")
    services.guest_create(wedding_id=wedding.pk, name="Bea Brown", rsvp="declined")
    url = reverse("admin:wedsync_guest_changelist")

    accepted = staff_client.get(url, {"rsvp__exact": "accepted"})
    searched = staff_client.get(url, {"q": "brown"})

    assert [g.name for g in accepted.context["cl"].result_list] == ["Ann Archer"]
    assert [g.name for g in searched.context["cl"].result_list] == ["Bea Brown"]


def test_admin__adding_a_guest_past_the_cap_shows_the_error(staff_client):
    wedding = make_wedding()
    _full(wedding)

    response = staff_client.post(
        reverse("admin:wedsync_guest_add"),
        {"wedding": wedding.pk, "name": "One too many", "rsvp": "pending", "diet": "none"},
    )

    assert response.status_code == 200  # the form again, with the error
    assert "the most one wedding may have" in response.content.decode()
    assert Guest.objects.filter(wedding=wedding).count() == MAX_GUESTS_PER_WEDDING


# --- the cache --------------------------------------------------------------------------


def test_wedding_guests__cached_and_dropped_by_every_change(django_assert_num_queries):
    # given the rows cached
    wedding = make_wedding()
    ann = services.guest_create(wedding_id=wedding.pk, name="Ann")
    assert [g["name"] for g in wedding_guests(wedding.pk)] == ["Ann"]
    with django_assert_num_queries(0):
        wedding_guests(wedding.pk)

    # when a guest is added, changed (the admin's plain save too) and removed
    services.guest_create(wedding_id=wedding.pk, name="Bea", table="2")
    after_add = wedding_guests(wedding.pk)
    ann.table = "1"
    ann.save()
    after_save = wedding_guests(wedding.pk)
    services.guest_delete(guest_id=ann.pk)

    # then each read after a change sees it
    assert [(g["name"], g["table"]) for g in after_add] == [("Ann", ""), ("Bea", "2")]
    assert [(g["name"], g["table"]) for g in after_save] == [("Ann", "1"), ("Bea", "2")]
    assert [g["name"] for g in wedding_guests(wedding.pk)] == ["Bea"]


def test_wedding_guests__dropped_when_the_wedding_is_deleted():
    wedding = make_wedding()
    services.guest_create(wedding_id=wedding.pk, name="Ann")
    wedding_guests(wedding.pk)
    wedding_id = wedding.pk

    wedding.delete()

    assert get_cache().get(guests_key(wedding_id)) is None


def test_user_coordinator_of__cached_and_dropped_by_a_membership_change():
    user = make_user()
    supplier = make_supplier(users=(user,))
    assert user_coordinator_of(user.pk) == []
    assert get_cache().get(coordinator_key(user.pk)) == []

    SupplierMembership.objects.filter(user=user).get().delete()
    SupplierMembership.objects.create(supplier=supplier, user=user, role="coordinator")

    assert user_coordinator_of(user.pk) == [supplier.pk]


# --- the views --------------------------------------------------------------------------

ROWS: list[dict[str, Any]] = [
    {"id": 1, "name": "Ann", "rsvp": "accepted", "diet": "vegan", "dietary_note": "No honey",
     "table": "Top"},
    {"id": 2, "name": "Bea", "rsvp": "declined", "diet": "none", "dietary_note": "",
     "table": "Top"},
]  # fmt: skip


def test_guest_view__other_vendors_and_nobody_see_nothing():
    for role, categories in (
        (roles.VENDOR, {"photographer", "florist"}),
        (roles.VENDOR, set()),
        (None, {"caterer"}),
    ):
        assert guest_view(ROWS, role=role, categories=categories) is None
        assert not guests_visible(role, categories)


def test_guest_view__a_vendor_of_two_suppliers_gets_both_parts_and_no_list():
    view = guest_view(ROWS, role=roles.VENDOR, categories={"venue", "caterer"})

    assert view == {
        "totals": {"pending": 0, "accepted": 1, "declined": 1},
        "tables": [
            {"table": "Top", "count": 1, "names": ["Ann"], "diets": {"vegan": 1},
             "dietary_notes": [{"diet": "vegan", "note": "No honey"}]},
        ],
    }  # fmt: skip


def test_guest_view__tables_in_room_plan_order():
    rows = [
        {**ROWS[0], "id": i, "table": table, "rsvp": "accepted"}
        for i, table in enumerate(["10", "", "Top", "2", "1"])
    ]

    view = guest_view(rows, role=roles.VENDOR, categories={"venue"})

    assert [t["table"] for t in view["tables"]] == ["1", "2", "10", "Top", ""]


# --- demo -------------------------------------------------------------------------------


def test_seed_demo__gives_each_wedding_a_few_valid_guests():
    demo = seed_demo(weddings=2, vendors_per_wedding=3, with_staff=False)

    for entry in demo["weddings"]:
        guests = list(Guest.objects.filter(wedding_id=entry["id"]))
        assert 6 <= len(guests) <= 12
        assert all(g.full_clean() is None for g in guests)
    assert {"id", "topic", "name", "suppliers", "couple"} <= set(demo["weddings"][0])
