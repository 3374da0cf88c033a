"""Topics: parsing, and who may subscribe and publish (PROTOCOL §3, §5)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import AnonymousUser

from realtime.errors import RealtimeError
from realtime.models import Event, TopicCursor
from realtime.services import event_publish
from realtime.topics import Topic, authorize_publish, authorize_subscribe, parse_topic
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from weddings.models import Supplier, SupplierMembership, Wedding


@dataclass
class World:
    """Two weddings; A has a planner and a photographer booked, B has neither."""

    wedding: Wedding
    other_wedding: Wedding
    planner_supplier: Supplier
    photo_supplier: Supplier
    planner: object
    photographer: object
    couple: object
    staff: object
    outsider: object
    inactive: object

    @property
    def topic(self) -> str:
        return f"wedding:{self.wedding.pk}"

    @property
    def other_topic(self) -> str:
        return f"wedding:{self.other_wedding.pk}"


def make_world() -> World:
    """Shared by the realtime event-log tests."""
    planner, photographer, couple = make_user(), make_user(), make_user()
    inactive = make_user(is_active=False)
    wedding = make_wedding(couple=(couple,))
    other_wedding = make_wedding(partner_one="Jo", partner_two="Kim")
    planner_supplier = make_supplier(category=Supplier.Category.PLANNER, users=(planner,))
    photo_supplier = make_supplier(users=(photographer, inactive))
    make_booking(supplier=planner_supplier, wedding=wedding)
    make_booking(supplier=photo_supplier, wedding=wedding)
    return World(
        wedding=wedding,
        other_wedding=other_wedding,
        planner_supplier=planner_supplier,
        photo_supplier=photo_supplier,
        planner=planner,
        photographer=photographer,
        couple=couple,
        staff=make_user(is_staff=True),
        outsider=make_user(),
        inactive=inactive,
    )


@pytest.fixture
def world(db) -> World:
    return make_world()


def _error(call, *args, **kwargs) -> RealtimeError:
    with pytest.raises(RealtimeError) as info:
        call(*args, **kwargs)
    return info.value


# --- parse_topic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("wedding:42", Topic("wedding", 42)),
        ("supplier:7", Topic("supplier", 7)),
        ("ops", Topic("ops")),
        (f"wedding:{2**63 - 1}", Topic("wedding", 2**63 - 1)),
    ],
)
def test_parse_topic__accepts_canonical_topics(text, expected):
    topic = parse_topic(text)

    assert topic == expected
    assert str(topic) == text


@pytest.mark.parametrize(
    "text",
    [
        "wedding:0042",
        "wedding:0",
        "wedding:-1",
        "wedding:+1",
        "wedding: 1",
        "wedding:1 ",
        " wedding:1",
        "wedding:1\n",
        "wedding:",
        "wedding",
        "wedding:1:2",
        "wedding:1.0",
        "wedding:١٢",  # Arabic-Indic digits are digits to str.isdigit, not to us
        "Wedding:1",
        f"wedding:{2**63}",
        "wedding:" + "9" * 40,
        "supplier:abc",
        "ops:1",
        "OPS",
        "user:1",
        "",
        "x" * 500,
        None,
        42,
        ["wedding:1"],
    ],
)
def test_parse_topic__rejects_anything_else_as_unknown_topic(text):
    error = _error(parse_topic, text)

    assert error.code == "unknown_topic"


# --- subscribe ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "allowed"),
    [
        ("planner", True),
        ("photographer", True),
        ("couple", True),
        ("staff", True),
        ("outsider", False),
        ("inactive", False),
    ],
)
def test_authorize_subscribe__wedding_topic_by_role(world, who, allowed):
    user = getattr(world, who)

    if allowed:
        assert authorize_subscribe(user, world.topic) == Topic("wedding", world.wedding.pk)
    else:
        assert _error(authorize_subscribe, user, world.topic).code == "forbidden"


def test_authorize_subscribe__inactive_booking_gives_no_access(world):
    # given
    world.wedding.bookings.filter(supplier=world.photo_supplier).update(active=False)

    # when
    error = _error(authorize_subscribe, world.photographer, world.topic)

    # then
    assert error.code == "forbidden"
    authorize_subscribe(world.planner, world.topic)  # the other booking still counts


def test_authorize_subscribe__anonymous_user_is_forbidden(world):
    assert _error(authorize_subscribe, AnonymousUser(), world.topic).code == "forbidden"
    assert _error(authorize_subscribe, None, "ops").code == "forbidden"


def test_authorize_subscribe__missing_wedding_gets_the_same_error_as_a_hidden_one(world):
    missing_id = Wedding.objects.order_by("-pk").first().pk + 1000

    hidden = _error(authorize_subscribe, world.photographer, world.other_topic)
    missing = _error(authorize_subscribe, world.photographer, f"wedding:{missing_id}")
    missing_for_staff = _error(authorize_subscribe, world.staff, f"wedding:{missing_id}")

    assert hidden.code == missing.code == missing_for_staff.code == "forbidden"
    # The message names only the topic asked for: swap the ids and they are equal.
    assert missing.message.replace(str(missing_id), "N") == hidden.message.replace(
        str(world.other_wedding.pk), "N"
    )
    assert missing.extra == hidden.extra == {}


def test_authorize_subscribe__supplier_topic_for_its_users_and_staff(world):
    topic = f"supplier:{world.photo_supplier.pk}"
    missing = f"supplier:{world.photo_supplier.pk + 1000}"

    assert authorize_subscribe(world.photographer, topic).id == world.photo_supplier.pk
    assert authorize_subscribe(world.staff, topic).kind == "supplier"
    for user in (world.planner, world.couple, world.outsider, world.inactive):
        assert _error(authorize_subscribe, user, topic).code == "forbidden"
    assert _error(authorize_subscribe, world.staff, missing).code == "forbidden"
    assert _error(authorize_subscribe, world.photographer, missing).code == "forbidden"


def test_authorize_subscribe__ops_is_staff_only(world):
    assert authorize_subscribe(world.staff, "ops") == Topic("ops")
    for user in (world.planner, world.couple, world.outsider):
        assert _error(authorize_subscribe, user, "ops").code == "forbidden"
    world.staff.is_active = False
    assert _error(authorize_subscribe, world.staff, "ops").code == "forbidden"


def test_authorize_subscribe__syntax_error_is_unknown_topic_even_for_staff(world):
    assert _error(authorize_subscribe, world.staff, "wedding:0042").code == "unknown_topic"


@pytest.mark.parametrize("who", ["planner", "photographer", "couple", "staff", "outsider"])
@pytest.mark.parametrize("kind", ["wedding", "supplier", "ops"])
def test_authorize_subscribe__costs_at_most_three_queries(
    world, django_assert_max_num_queries, who, kind
):
    topic = {"wedding": world.topic, "supplier": f"supplier:{world.photo_supplier.pk}"}.get(
        kind, "ops"
    )
    user = getattr(world, who)

    with django_assert_max_num_queries(3):
        try:
            authorize_subscribe(user, topic)
        except RealtimeError:
            pass


# --- publish --------------------------------------------------------------------------


def test_authorize_publish__only_wedding_topics(world):
    for topic in (f"supplier:{world.photo_supplier.pk}", "ops"):
        assert _error(authorize_publish, world.staff, topic, "message.posted").code == "forbidden"
        assert _error(authorize_publish, world.photographer, topic, "message.posted").code == (
            "forbidden"
        )


def test_authorize_publish__unknown_event_names_the_event_field(world):
    error = _error(authorize_publish, world.planner, world.topic, "timeline.exploded")

    assert error.code == "invalid_payload"
    assert error.extra["field"] == "event"


def test_authorize_publish__hidden_topic_wins_over_unknown_event(world):
    # Nothing about a hidden topic is revealed, not even that the event name was bad.
    error = _error(authorize_publish, world.outsider, world.topic, "no.such.event")

    assert error.code == "forbidden"


@pytest.mark.parametrize("who", ["planner", "photographer", "couple", "staff", "outsider"])
@pytest.mark.parametrize("event", ["timeline.shifted", "message.posted", "vendor.status"])
def test_authorize_publish__costs_at_most_three_queries(
    world, django_assert_max_num_queries, who, event
):
    with django_assert_max_num_queries(3):
        try:
            authorize_publish(getattr(world, who), world.topic, event)
        except RealtimeError:
            pass


MESSAGE = {"text": "Cars are here"}


def _publish(user, topic, event="message.posted", payload=None):
    return event_publish(topic=topic, event=event, payload=payload or MESSAGE, user=user)


@pytest.mark.parametrize("who", ["planner", "photographer", "staff"])
def test_publish__any_working_member_may_post_a_message(world, who):
    result = _publish(getattr(world, who), world.topic)

    assert result.created
    assert result.event.actor_user_id == getattr(world, who).pk


def test_publish__vendor_may_not_publish_on_a_wedding_it_is_not_booked_on(world):
    # given: the photographer is booked on A only
    make_booking(supplier=world.planner_supplier, wedding=world.other_wedding, active=False)

    # when
    on_a = _publish(world.photographer, world.topic)
    on_b = _error(_publish, world.photographer, world.other_topic)

    # then
    assert on_a.event.seq == 1
    assert on_b.code == "forbidden"
    assert not Event.objects.filter(topic=world.other_topic).exists()


def test_publish__missing_wedding_gets_the_same_reply_as_a_forbidden_one(world):
    missing_topic = f"wedding:{world.other_wedding.pk + 1000}"

    hidden = _error(_publish, world.photographer, world.other_topic)
    missing = _error(_publish, world.photographer, missing_topic)

    assert (hidden.code, hidden.http_status) == (missing.code, missing.http_status)
    assert hidden.message.replace(world.other_topic, "T") == missing.message.replace(
        missing_topic, "T"
    )
    assert hidden.as_dict().keys() == missing.as_dict().keys()
    assert not TopicCursor.objects.exists()


ITEM = {"title": "Speeches", "starts_at": "2026-06-13T17:00:00Z"}


def test_publish__couple_may_not_edit_the_timeline(world):
    error = _error(_publish, world.couple, world.topic, "timeline.item.created", ITEM)

    assert error.code == "forbidden"
    assert not world.wedding.timeline_items.exists()
    assert not Event.objects.exists()


def test_publish__plain_vendor_may_not_edit_the_timeline_but_coordinator_may(world):
    # given
    assert _error(
        _publish, world.photographer, world.topic, "timeline.item.created", ITEM
    ).code == ("forbidden")
    SupplierMembership.objects.filter(user=world.photographer).update(role="coordinator")

    # when
    result = _publish(world.photographer, world.topic, "timeline.item.created", ITEM)

    # then
    assert result.event.payload["title"] == "Speeches"


@pytest.mark.parametrize("who", ["planner", "staff"])
def test_publish__planner_and_staff_may_edit_the_timeline(world, who):
    result = _publish(getattr(world, who), world.topic, "timeline.item.created", ITEM)

    assert world.wedding.timeline_items.get().pk == result.event.payload["id"]


def test_publish__inactive_user_is_forbidden(world):
    assert _error(_publish, world.inactive, world.topic).code == "forbidden"


def test_publish__anonymous_user_is_forbidden(world):
    assert _error(_publish, AnonymousUser(), world.topic).code == "forbidden"


def test_publish__staff_may_not_publish_on_ops_or_supplier_topics(world):
    for topic in ("ops", f"supplier:{world.photo_supplier.pk}"):
        assert _error(_publish, world.staff, topic).code == "forbidden"
    assert not Event.objects.exists()


def test_publish__vendor_status_only_for_own_supplier(world):
    own = {"supplier_id": world.photo_supplier.pk, "status": "arrived"}
    other = {"supplier_id": world.planner_supplier.pk, "status": "arrived"}

    result = _publish(world.photographer, world.topic, "vendor.status", own)
    error = _error(_publish, world.photographer, world.topic, "vendor.status", other)
    couple_error = _error(_publish, world.couple, world.topic, "vendor.status", own)

    assert result.event.actor_supplier_id == world.photo_supplier.pk
    assert error.code == couple_error.code == "forbidden"
    assert error.extra["field"] == "payload.supplier_id"
    assert Event.objects.count() == 1


def test_publish__staff_may_post_vendor_status_for_a_booked_supplier_only(world):
    unbooked = make_supplier()
    booked = {"supplier_id": world.planner_supplier.pk, "status": "ready"}

    result = _publish(world.staff, world.topic, "vendor.status", booked)
    error = _error(
        _publish,
        world.staff,
        world.topic,
        "vendor.status",
        {"supplier_id": unbooked.pk, "status": "ready"},
    )

    assert result.event.actor_supplier_id is None  # staff act for no supplier
    assert (error.code, error.extra["field"]) == ("invalid_payload", "payload.supplier_id")


def test_publish__member_of_an_unbooked_supplier_may_not_post_its_status(world):
    # given: the planner also works for a supplier that is not booked on the wedding
    side_supplier = make_supplier(users=(world.planner,))
    make_booking(supplier=side_supplier, wedding=world.wedding, active=False)

    # when
    error = _error(
        _publish,
        world.planner,
        world.topic,
        "vendor.status",
        {"supplier_id": side_supplier.pk, "status": "en_route"},
    )

    # then
    assert (error.code, error.extra["field"]) == ("invalid_payload", "payload.supplier_id")
