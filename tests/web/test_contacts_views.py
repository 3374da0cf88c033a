"""The day's contacts and the planner's add and delete, through the real HTTP interfaces.

The role matrix (``read.contacts``) gives the booked suppliers' phone numbers to the
wedding's members and not to the couple: on the page, in the page's state and in the
snapshot API. Adding and deleting items is the planner's (``publish.timeline.item.*``):
the page offers the controls to them only, and the server refuses everyone else.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from django.test import Client

from realtime.tokens import token_issue
from tests.web.conftest import Day
from tests.web.test_views import client_for, embedded_state
from weddings.models import Supplier, TimelineItem

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(30)]

PLANNER_PHONE = "+44 20 7946 0001"
PHOTO_PHONE = "07700 900123"


def with_phones(day: Day) -> Day:
    """The planner's and the photographer's companies have numbers; the florist none."""
    for supplier, phone in ((day.planner_co, PLANNER_PHONE), (day.photo_co, PHOTO_PHONE)):
        supplier.phone = phone
        supplier.save(update_fields=["phone"])
    return day


def phones_of(state: dict[str, Any]) -> dict[str, str | None]:
    return {s["name"]: s.get("phone") for s in state["suppliers"]}


@pytest.mark.parametrize("who", ["photographer", "florist", "planner"])
def test_page__members_get_every_booked_suppliers_phone(day: Day, who: str) -> None:
    # given
    with_phones(day)

    # when
    response = client_for(getattr(day, who)).get(f"/weddings/{day.wedding.pk}/")

    # then the state carries the numbers the suppliers have, and the page a contacts list
    state = embedded_state(response)
    assert phones_of(state) == {
        "Juniper Weddings": PLANNER_PHONE,
        "Kestrel Photography": PHOTO_PHONE,
        "Foxglove Flowers": None,  # no number on file: no key at all
    }
    assert state["viewer"]["contacts"] is True
    assert 'id="contacts"' in response.content.decode()
    # and the venue, for the maps link
    assert state["wedding"]["venue"] == "Hartwell Manor"
    assert state["wedding"]["venue_address"] == "Oxford Road"


def test_page__the_couple_get_no_phone_number(day: Day) -> None:
    # given
    with_phones(day)

    # when
    client = client_for(day.couple)
    page = client.get(f"/weddings/{day.wedding.pk}/")
    reloaded = client.get(f"/weddings/{day.wedding.pk}/state")

    # then no number reaches them, in the page or its state, but the venue does
    html = page.content.decode()
    assert PLANNER_PHONE not in html and PHOTO_PHONE not in html
    assert b"phone" not in reloaded.content
    state = embedded_state(page)
    assert state["viewer"]["contacts"] is False
    assert all("phone" not in supplier for supplier in state["suppliers"])
    assert 'id="contacts"' not in html
    assert state["wedding"]["venue_address"] == "Oxford Road"


def test_page_state__a_changed_number_shows_at_once(day: Day) -> None:
    # given a cached state with the old number
    with_phones(day)
    client = client_for(day.florist)
    assert (
        phones_of(client.get(f"/weddings/{day.wedding.pk}/state").json())["Kestrel Photography"]
        == PHOTO_PHONE
    )

    # when the photographer's company changes its number (the admin)
    supplier = Supplier.objects.get(pk=day.photo_co.pk)
    supplier.phone = "07700 900999"
    supplier.save()

    # then the next read has the new one
    state = client.get(f"/weddings/{day.wedding.pk}/state").json()
    assert phones_of(state)["Kestrel Photography"] == "07700 900999"


@pytest.mark.django_db(transaction=True)
def test_snapshot_api__numbers_for_members_not_for_the_couple(day: Day) -> None:
    # given
    with_phones(day)

    def snapshot(user: Any) -> dict[str, Any]:
        response = Client().get(
            f"/api/weddings/{day.wedding.pk}/",
            HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}",
        )
        assert response.status_code == 200
        return response.json()

    # when / then: the same cached snapshot, read by each
    assert phones_of(snapshot(day.photographer))["Juniper Weddings"] == PLANNER_PHONE
    assert all("phone" not in s for s in snapshot(day.couple)["suppliers"])
    assert phones_of(snapshot(day.planner))["Kestrel Photography"] == PHOTO_PHONE


def test_page__add_and_delete_controls_only_for_the_planner(day: Day) -> None:
    path = f"/weddings/{day.wedding.pk}/"
    planner = client_for(day.planner).get(path).content.decode()
    assert 'id="add-item"' in planner and 'id="delete-item"' in planner
    for who in (day.photographer, day.couple):
        html = client_for(who).get(path).content.decode()
        assert 'id="add-item"' not in html and 'id="delete-item"' not in html
        # everyone may print the run sheet
        assert 'id="print"' in html


def _publish(user: Any, day: Day, event: str, payload: dict) -> Any:
    return Client().post(
        f"/api/weddings/{day.wedding.pk}/events",
        orjson.dumps({"event": event, "payload": payload}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token_issue(user=user)}",
    )


def test_publish__vendor_and_couple_may_not_add_or_delete_items(day: Day) -> None:
    # given an item and a new one's payload
    item = day.items["Speeches"]
    new = {"title": "Fireworks", "starts_at": "2030-06-13T20:00:00Z"}
    for who in (day.photographer, day.couple):
        # when they try
        created = _publish(who, day, "timeline.item.created", new)
        deleted = _publish(who, day, "timeline.item.deleted", {"id": item.pk, "version": 1})

        # then the server refuses both, and nothing changes
        assert (created.status_code, created.json()["error"]["code"]) == (403, "forbidden")
        assert (deleted.status_code, deleted.json()["error"]["code"]) == (403, "forbidden")
    assert TimelineItem.objects.filter(pk=item.pk).exists()
    assert not TimelineItem.objects.filter(title="Fireworks").exists()
