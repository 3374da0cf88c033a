"""The guests in the wedding snapshot (``GET /api/weddings/<id>/``), cell by cell of the
role matrix's ``guests.*`` rows (docs/security.md; ADR 0026): a column per kind of
reader, including the vendors those rows tell apart by their supplier's category (a
caterer, a venue), each through the real API with a token, on a committed world (the
snapshot's async view reads in the realtime database threads).

``test_expected__is_the_role_matrix`` holds the hand-written table to
``weddings.roles``; tests/realtime/test_auth_matrix.py names these rows as tried here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from django.test import Client

from core.cache import get_cache
from realtime.api_keys import api_key_prepare
from realtime.models import ApiKey
from realtime.snapshots import snapshot_key
from realtime.tokens import token_issue
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.realtime import test_auth_matrix
from weddings import roles, services
from weddings.models import Guest, Supplier, SupplierMembership, Wedding

pytestmark = [pytest.mark.timeout(30)]
# A committed world, emptied with DELETE afterwards (test_auth_matrix's, ~10x faster
# than the flush): the API reads it from its own database threads.
transactional_db = test_auth_matrix.transactional_db
COMMITTED = pytest.mark.usefixtures("transactional_db")

# name, rsvp, diet, note, table
GUESTS = (
    ("Ann Archer", "accepted", "vegan", "No honey either", "1"),
    ("Bea Brown", "accepted", "none", "", "1"),
    ("Cal Cole", "pending", "nut_allergy", "Severe nut allergy: no traces", "2"),
    ("Dee Dunn", "declined", "vegetarian", "Would have wanted the risotto", ""),
    ("Eve Ezra", "accepted", "gluten_free", "", ""),
    ("Fay Ford", "accepted", "none", "", "10"),
)
TOTALS = {"pending": 1, "accepted": 4, "declined": 1}
# The tables in room-plan order (2 before 10, the unseated last), declined guests left out.
SEATING = [
    {"table": "1", "count": 2, "names": ["Ann Archer", "Bea Brown"]},
    {"table": "2", "count": 1, "names": ["Cal Cole"]},
    {"table": "10", "count": 1, "names": ["Fay Ford"]},
    {"table": "", "count": 1, "names": ["Eve Ezra"]},
]
CATERING = [
    {"table": "1", "count": 2, "diets": {"vegan": 1, "none": 1},
     "dietary_notes": [{"diet": "vegan", "note": "No honey either"}]},
    {"table": "2", "count": 1, "diets": {"nut_allergy": 1},
     "dietary_notes": [{"diet": "nut_allergy", "note": "Severe nut allergy: no traces"}]},
    {"table": "10", "count": 1, "diets": {"none": 1}, "dietary_notes": []},
    {"table": "", "count": 1, "diets": {"gluten_free": 1}, "dietary_notes": []},
]  # fmt: skip

LIST, SEAT, CATER, NONE, HIDDEN = "list", "seating", "catering", "none", "404"
# Who reads what of A's guests: the whole list (with the seating and the catering), the
# seating only, the catering only, nothing (no ``guests`` key), or not the wedding (404).
EXPECTED = {
    "planner": LIST,  # a user of the planning company booked on A
    "coordinator": LIST,  # a coordinator of the photography company (the matrix: planner)
    "photographer": NONE,  # a member of that company
    "caterer": CATER,  # a user of the catering company booked on A
    "venue": SEAT,  # a user of A's venue
    "couple": LIST,
    "staff": LIST,
    "vendor_b": HIDDEN,  # a venue booked on wedding B only
}
MATRIX_ROLE = {  # (role, categories of their suppliers booked on A) in weddings.roles
    "planner": (roles.PLANNER, {"planner"}),
    "coordinator": (roles.PLANNER, {"photographer"}),
    "photographer": (roles.VENDOR, {"photographer"}),
    "caterer": (roles.VENDOR, {"caterer"}),
    "venue": (roles.VENDOR, {"venue"}),
    "couple": (roles.COUPLE, set()),
    "staff": (roles.STAFF, set()),
}


@dataclass
class World:
    a: Wedding
    users: dict[str, Any]
    guests: list[Guest]


def build_world() -> World:
    """Wedding A (planner, photographers, caterer, venue booked; six guests) and B."""
    users = {name: make_user(is_staff=name == "staff") for name in EXPECTED}
    a = make_wedding(couple=(users["couple"],))
    b = make_wedding(partner_one="Jo")
    for category, names in (
        (Supplier.Category.PLANNER, ("planner",)),
        (Supplier.Category.PHOTOGRAPHER, ("photographer",)),
        (Supplier.Category.CATERER, ("caterer",)),
        (Supplier.Category.VENUE, ("venue",)),
    ):
        supplier = make_supplier(category=category, users=[users[n] for n in names])
        make_booking(supplier=supplier, wedding=a)
        if category == Supplier.Category.PHOTOGRAPHER:
            SupplierMembership.objects.create(
                supplier=supplier, user=users["coordinator"], role="coordinator"
            )
    venue_b = make_supplier(category=Supplier.Category.VENUE, users=(users["vendor_b"],))
    make_booking(supplier=venue_b, wedding=b)
    guests = [
        services.guest_create(
            wedding_id=a.pk, name=name, rsvp=rsvp, diet=diet, dietary_note=note, table=table
        )
        for name, rsvp, diet, note, table in GUESTS
    ]
    return World(a=a, users=users, guests=guests)


@pytest.fixture
def world() -> World:
    return build_world()


def snapshot(world: World, reader: str) -> Any:
    token = token_issue(user=world.users[reader])
    return Client().get(f"/api/weddings/{world.a.pk}/", HTTP_AUTHORIZATION=f"Bearer {token}")


def outcome(response: Any) -> str:
    """What of the guests a snapshot response shows, checked against A's guests exactly."""
    if response.status_code == 404:
        return HIDDEN
    assert response.status_code == 200, response.content
    body = response.json()
    if "guests" not in body:
        return NONE
    guests = body["guests"]
    assert guests["totals"] == TOTALS
    if "guests" in guests:  # the whole list: every guest and field, the tables in full
        assert [g["name"] for g in guests["guests"]] == [g[0] for g in GUESTS]
        assert [
            (g["rsvp"], g["diet"], g["dietary_note"], g["table"]) for g in guests["guests"]
        ] == [g[1:] for g in GUESTS]
        assert guests["tables"] == [{**s, **c} for s, c in zip(SEATING, CATERING, strict=True)]
        return LIST
    assert set(guests) == {"totals", "tables"}
    text = orjson.dumps(guests).decode()
    if guests["tables"] == SEATING:  # names, and nothing of what they eat
        assert "diets" not in text and "nut" not in text
        return SEAT
    assert guests["tables"] == CATERING
    assert not any(name in text for name, *_ in GUESTS)  # no guest named
    return CATER


def test_expected__is_the_role_matrix():
    for reader, (role, categories) in MATRIX_ROLE.items():
        allowed = {
            row: roles.allows(f"guests.{row}", role, categories)
            for row in ("list", "seating", "catering")
        }
        wanted = {
            LIST: {"list": True, "seating": True, "catering": True},
            SEAT: {"list": False, "seating": True, "catering": False},
            CATER: {"list": False, "seating": False, "catering": True},
            NONE: {"list": False, "seating": False, "catering": False},
        }[EXPECTED[reader]]
        assert allowed == wanted, reader


@COMMITTED
@pytest.mark.parametrize("reader", sorted(EXPECTED))
def test_snapshot__shows_each_reader_the_guests_their_role_may_read(world, reader):
    assert outcome(snapshot(world, reader)) == EXPECTED[reader]


@COMMITTED
def test_snapshot__a_guest_change_shows_on_the_next_read_without_reloading_the_snapshot(world):
    # given the caterer has read the snapshot (snapshot and guests now cached)
    assert outcome(snapshot(world, "caterer")) == CATER
    cached = get_cache().get(snapshot_key(world.a.pk))
    assert cached is not None

    # when the planner's office moves Bea to table 2 and she turns vegan
    services.guest_update(guest_id=world.guests[1].pk, table="2", diet="vegan")

    # then the next read shows it, and the cached snapshot was left alone
    tables = snapshot(world, "caterer").json()["guests"]["tables"]
    assert tables[0]["diets"] == {"vegan": 1} and tables[1]["diets"] == {
        "nut_allergy": 1,
        "vegan": 1,
    }
    assert get_cache().get(snapshot_key(world.a.pk)) is cached


@COMMITTED
def test_snapshot__a_vendor_made_coordinator_reads_the_whole_list_at_once(world):
    # given the photographer sees nothing of the guests
    assert outcome(snapshot(world, "photographer")) == NONE

    # when their membership becomes a coordinator's (the admin: a plain save)
    membership = SupplierMembership.objects.get(user=world.users["photographer"])
    membership.role = SupplierMembership.Role.COORDINATOR
    membership.save()

    # then
    assert outcome(snapshot(world, "photographer")) == LIST


@COMMITTED
def test_snapshot__an_api_key_reads_the_whole_list_as_staff_do(world):
    # given a key of the platform's backend that may read A (ADR 0024: staff's view)
    key = ApiKey(name="crm-sync", wedding_ids=[world.a.pk], can_read=True)
    credential = api_key_prepare(key=key, created_by=world.users["staff"])
    key.save()

    # when
    response = Client().get(
        f"/api/weddings/{world.a.pk}/", HTTP_AUTHORIZATION=f"Bearer {credential}"
    )

    # then
    assert outcome(response) == LIST
