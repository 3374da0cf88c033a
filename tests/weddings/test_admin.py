"""The admin: pages load for staff, vendors are refused, saves count as new versions."""

from __future__ import annotations

import pytest
from django.forms import MultiWidget
from django.test import Client
from django.urls import reverse

from tests.factories import make_booking, make_item, make_supplier, make_user, make_wedding
from weddings.models import Booking, Supplier, TimelineItem, Wedding

pytestmark = pytest.mark.django_db


MODELS = ("supplier", "wedding", "booking", "timelineitem")


def _client(user) -> Client:
    # Behind the proxy header the site counts as HTTPS, so no SSL redirect even when
    # DEBUG is off; with DEBUG on the header is ignored.
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    client.force_login(user)
    return client


@pytest.fixture
def data():
    """One of each model, linked as on a real wedding."""
    vendor = make_user()
    couple = make_user()
    supplier = make_supplier(users=(vendor,))
    wedding = make_wedding(couple=(couple,), venue_name="Old Mill")
    booking = make_booking(supplier=supplier, wedding=wedding)
    ceremony = make_item(wedding=wedding, title="Ceremony", start=(14, 0))
    ceremony.suppliers.add(supplier)
    dinner = make_item(wedding=wedding, title="Dinner", start=(18, 0))
    return {
        "vendor": vendor,
        "supplier": supplier,
        "wedding": wedding,
        "booking": booking,
        "timelineitem": ceremony,
        "dinner": dinner,
    }


@pytest.fixture
def staff_client():
    return _client(make_user(username="boss", is_staff=True, is_superuser=True))


@pytest.mark.parametrize("model", MODELS)
def test_admin__changelist_loads_for_staff(staff_client, data, model):
    response = staff_client.get(reverse(f"admin:wedsync_{model}_changelist"))

    assert response.status_code == 200
    assert response.context["cl"].result_count >= 1


@pytest.fixture
def other_wedding(data):
    """A second wedding, its supplier, booking and item, none matching ``data``'s searches."""
    florist = Supplier.objects.create(
        name="Foxglove Flowers", category="florist", email="hello@foxglove.example"
    )
    wedding = make_wedding(partner_one="Olivia", partner_two="Rhys", venue_name="Cliff Chapel")
    booking = make_booking(supplier=florist, wedding=wedding)
    item = make_item(wedding=wedding, title="Harbour toast", start=(16, 0), location="Quay")
    return {"supplier": florist, "wedding": wedding, "booking": booking, "timelineitem": item}


def _search(client, model: str, query: str) -> set[int]:
    response = client.get(reverse(f"admin:wedsync_{model}_changelist"), {"q": query})
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


# model, query, which rows it must find: "data" (the Old Mill wedding's), "other", both
SEARCHES = [
    ("supplier", "foxglove", {"other"}),  # name
    ("supplier", "hello@foxglove", {"other"}),  # email
    ("wedding", "mill", {"data"}),  # venue
    ("wedding", "olivia", {"other"}),  # partner
    ("booking", "foxglove", {"other"}),  # supplier name
    ("booking", "rhys", {"other"}),  # wedding partner
    ("timelineitem", "ceremony", {"data"}),  # title
    ("timelineitem", "quay", {"other"}),  # location
    ("timelineitem", "olivia", {"other"}),  # wedding partner
    ("wedding", "nothing-like-this", set()),
]


@pytest.mark.parametrize(
    ("model", "query", "found"), SEARCHES, ids=[f"{m}-{q}" for m, q, _ in SEARCHES]
)
def test_admin__changelist_search_finds_the_matching_rows_only(
    staff_client, data, other_wedding, model, query, found
):
    rows = {"data": data[model].pk, "other": other_wedding[model].pk}

    assert _search(staff_client, model, query) == {rows[name] for name in found}


def test_admin__timeline_search_by_partner_finds_every_item_of_that_wedding(
    staff_client, data, other_wedding
):
    # both of the Alex & Sam wedding's items, and not the other wedding's
    found = _search(staff_client, "timelineitem", "alex")

    assert found == {data["timelineitem"].pk, data["dinner"].pk}


@pytest.mark.parametrize("model", MODELS)
def test_admin__change_and_add_pages_load_for_staff(staff_client, data, model):
    change = reverse(f"admin:wedsync_{model}_change", args=[data[model].pk])
    add = reverse(f"admin:wedsync_{model}_add")

    assert staff_client.get(change).status_code == 200
    assert staff_client.get(add).status_code == 200


def test_admin__wedding_change_page_shows_bookings_and_timeline(staff_client, data):
    response = staff_client.get(reverse("admin:wedsync_wedding_change", args=[data["wedding"].pk]))

    inline_models = {inline.formset.model for inline in response.context["inline_admin_formsets"]}
    assert inline_models == {Booking, TimelineItem}
    assert b"Ceremony" in response.content


def test_admin__supplier_changelist_counts_users(staff_client, data):
    data["supplier"].memberships.create(user=make_user())

    response = staff_client.get(reverse("admin:wedsync_supplier_changelist"))

    [row] = response.context["cl"].result_list
    assert row._users_count == 2


@pytest.mark.parametrize("model", MODELS)
def test_admin__vendor_is_refused(data, model):
    # given: an active vendor without staff status
    client = _client(data["vendor"])

    # when
    changelist = client.get(reverse(f"admin:wedsync_{model}_changelist"))
    change = client.get(reverse(f"admin:wedsync_{model}_change", args=[data[model].pk]))

    # then
    for response in (changelist, change):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_admin__anonymous_is_sent_to_login(data):
    response = Client(HTTP_X_FORWARDED_PROTO="https").get(reverse("admin:index"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


# --- saving counts as a new version -------------------------------------------------------


def _bound_values(form) -> dict:
    """What a browser posts back for a form left as rendered."""
    values: dict = {}
    for field in form:
        value = field.value()
        widget = field.field.widget
        if isinstance(widget, MultiWidget):  # the split date / time inputs
            for index, part in enumerate(widget.decompress(value)):
                values[f"{field.html_name}_{index}"] = "" if part is None else str(part)
        elif isinstance(value, bool):
            if value:
                values[field.html_name] = "on"
        elif isinstance(value, list | tuple):
            values[field.html_name] = [getattr(v, "pk", v) for v in value]
        elif value is not None:
            values[field.html_name] = getattr(value, "pk", value)
    return values


def _unchanged_post_data(response) -> dict:
    """The change page's main form and inline formsets, as the browser would post them."""
    data = _bound_values(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        data.update(_bound_values(inline.formset.management_form))
        for form in inline.formset.forms:
            data.update(_bound_values(form))
    return data


def test_admin__timeline_item_save_bumps_version(staff_client, data):
    # given
    item = data["timelineitem"]
    url = reverse("admin:wedsync_timelineitem_change", args=[item.pk])
    post = _unchanged_post_data(staff_client.get(url))
    post["title"] = "Vows"

    # when
    response = staff_client.post(url, post)

    # then
    assert response.status_code == 302, response.context["adminform"].form.errors
    item.refresh_from_db()
    assert (item.title, item.version) == ("Vows", 2)
    assert list(item.suppliers.all()) == [data["supplier"]]


def test_admin__timeline_item_supplier_change_bumps_version(staff_client, data):
    # given
    item = data["timelineitem"]
    url = reverse("admin:wedsync_timelineitem_change", args=[item.pk])
    post = _unchanged_post_data(staff_client.get(url))
    post["suppliers"] = []

    # when
    staff_client.post(url, post)

    # then
    item.refresh_from_db()
    assert item.version == 2
    assert not item.suppliers.exists()


def test_admin__timeline_item_unchanged_save_keeps_version(staff_client, data):
    item = data["timelineitem"]
    url = reverse("admin:wedsync_timelineitem_change", args=[item.pk])

    response = staff_client.post(url, _unchanged_post_data(staff_client.get(url)))

    assert response.status_code == 302
    item.refresh_from_db()
    assert item.version == 1


def test_admin__timeline_item_added_at_version_one(staff_client, data):
    # given
    add = reverse("admin:wedsync_timelineitem_add")
    post = _unchanged_post_data(staff_client.get(add))
    post.update(
        wedding=data["wedding"].pk,
        title="First dance",
        starts_at_0="2026-06-13",
        starts_at_1="20:00:00",
    )

    # when
    response = staff_client.post(add, post)

    # then
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert TimelineItem.objects.get(title="First dance").version == 1


def test_admin__wedding_inline_edit_bumps_only_changed_items(staff_client, data):
    # given
    wedding, ceremony, dinner = data["wedding"], data["timelineitem"], data["dinner"]
    url = reverse("admin:wedsync_wedding_change", args=[wedding.pk])
    post = _unchanged_post_data(staff_client.get(url))
    [index] = [
        key.split("-")[1]
        for key, value in post.items()
        if key.startswith("timeline_items-") and key.endswith("-id") and value == ceremony.pk
    ]
    post[f"timeline_items-{index}-title"] = "Vows"

    # when
    response = staff_client.post(url, post)

    # then
    assert response.status_code == 302
    ceremony.refresh_from_db()
    dinner.refresh_from_db()
    assert (ceremony.title, ceremony.version) == ("Vows", 2)
    assert (dinner.title, dinner.version) == ("Dinner", 1)


def test_admin__wedding_unchanged_save_keeps_versions(staff_client, data):
    wedding = data["wedding"]
    url = reverse("admin:wedsync_wedding_change", args=[wedding.pk])

    response = staff_client.post(url, _unchanged_post_data(staff_client.get(url)))

    assert response.status_code == 302
    assert set(wedding.timeline_items.values_list("version", flat=True)) == {1}
    assert Wedding.objects.get(pk=wedding.pk).couple.count() == 1
    assert Supplier.objects.count() == 1
