"""Emergencies (PROTOCOL §5, docs/security.md "Emergencies: ids and who resolves"): the
server makes the ids, a v1 client's own id is kept only while unused on the topic, and
only the raiser, the wedding's planner or coordinator, or staff may resolve one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from realtime.errors import RealtimeError
from realtime.models import Event
from realtime.services import event_publish, event_publish_system
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.realtime.test_consumer import opened  # noqa: F401 - fixture
from weddings.models import Supplier, Wedding


@dataclass
class Day:
    wedding: Wedding
    other: Wedding
    planner: Any
    coordinator: Any
    photographer: Any
    florist: Any
    couple: Any
    staff: Any

    @property
    def topic(self) -> str:
        return self.wedding.topic


def make_day() -> Day:
    """A wedding with a planner, a coordinator (of the band), two ordinary vendors, a couple;
    staff; and another wedding the same vendors work on too."""
    planner, coordinator, photographer, florist, couple = (make_user() for _ in range(5))
    wedding, other = make_wedding(couple=(couple,)), make_wedding(partner_one="Jo")
    suppliers = (
        make_supplier(category=Supplier.Category.PLANNER, users=(planner,)),
        make_supplier(category=Supplier.Category.MUSIC, users=(coordinator,), role="coordinator"),
        make_supplier(users=(photographer,)),
        make_supplier(category=Supplier.Category.FLORIST, users=(florist,)),
    )
    for supplier in suppliers:
        make_booking(supplier=supplier, wedding=wedding)
        make_booking(supplier=supplier, wedding=other)
    return Day(
        wedding=wedding,
        other=other,
        planner=planner,
        coordinator=coordinator,
        photographer=photographer,
        florist=florist,
        couple=couple,
        staff=make_user(is_staff=True),
    )


@pytest.fixture
def day(db) -> Day:
    return make_day()


def _publish(user: Any, topic: str, event: str, payload: dict[str, Any]) -> Event:
    return event_publish(topic=topic, event=event, payload=payload, user=user).event


def _raise(day: Day, user: Any, **extra: Any) -> Event:
    payload = {"kind": "medical", "text": "A guest fainted", **extra}
    return _publish(user, day.topic, "emergency.raised", payload)


def _resolve(day: Day, user: Any, emergency_id: str) -> Event:
    return _publish(user, day.topic, "emergency.resolved", {"id": emergency_id, "text": "OK"})


def _refused(call: Any, *args: Any, **kwargs: Any) -> RealtimeError:
    count = Event.objects.count()
    with pytest.raises(RealtimeError) as info:
        call(*args, **kwargs)
    assert Event.objects.count() == count  # nothing stored
    return info.value


# --- who resolves -------------------------------------------------------------------------


def test_resolve__a_vendor_may_not_resolve_another_vendors_emergency(day):
    raised = _raise(day, day.florist)

    error = _refused(_resolve, day, day.photographer, raised.payload["id"])

    assert (error.code, error.extra["field"]) == ("forbidden", "payload.id")
    assert "raised" in error.message
    # and the emergency is still open: its raiser resolves it
    assert _resolve(day, day.florist, raised.payload["id"]).seq == raised.seq + 1


def test_resolve__the_couple_may_not_resolve_a_vendors_emergency(day):
    raised = _raise(day, day.florist)

    error = _refused(_resolve, day, day.couple, raised.payload["id"])

    assert error.code == "forbidden"


def test_resolve__the_raiser_may(day):
    raised = _raise(day, day.photographer)

    resolved = _resolve(day, day.photographer, raised.payload["id"])

    assert resolved.payload == {"id": raised.payload["id"], "text": "OK"}
    assert (resolved.priority, resolved.actor_user_id) == ("critical", day.photographer.pk)


@pytest.mark.parametrize("who", ["planner", "coordinator", "staff"])
def test_resolve__a_planner_coordinator_or_staff_may_resolve_anyones(day, who):
    raised = _raise(day, day.florist)

    resolved = _resolve(day, getattr(day, who), raised.payload["id"])

    assert resolved.payload["id"] == raised.payload["id"]


def test_resolve__a_server_raised_emergency_only_by_planner_coordinator_or_staff(day):
    event_publish_system(
        day.topic, "emergency.raised", {"id": "sys-1", "kind": "weather", "text": "Storm"},
        priority="critical", ack_required=True,
    )  # fmt: skip

    assert _refused(_resolve, day, day.photographer, "sys-1").code == "forbidden"
    assert _resolve(day, day.coordinator, "sys-1").payload["id"] == "sys-1"


def test_resolve__an_id_that_is_not_an_open_emergency_here_is_invalid(day):
    raised = _raise(day, day.florist)
    elsewhere = _publish(
        day.florist, day.other.topic, "emergency.raised", {"kind": "fire", "text": "Smoke"}
    )
    _resolve(day, day.florist, raised.payload["id"])

    for emergency_id in ("never-raised", raised.payload["id"], elsewhere.payload["id"]):
        # unknown, already resolved, and an emergency of another wedding
        error = _refused(_resolve, day, day.planner, emergency_id)
        assert (error.code, error.extra["field"]) == ("invalid_payload", "payload.id")


# --- ids ----------------------------------------------------------------------------------


def test_raise__the_server_makes_unique_ids_and_ignores_nothing_else(day):
    raised = [
        _raise(day, user) for user in (day.florist, day.florist, day.photographer, day.planner)
    ]

    ids = [event.payload["id"] for event in raised]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, str) and 1 <= len(i) <= 64 for i in ids)
    assert raised[0].payload == {"id": ids[0], "kind": "medical", "text": "A guest fainted"}


def test_raise__a_v1_clients_fresh_id_is_kept(day):
    raised = _raise(day, day.photographer, id="cam-1")

    assert raised.payload["id"] == "cam-1"
    assert Event.objects.get(topic=day.topic, seq=raised.seq).payload["id"] == "cam-1"
    # the same id on another wedding is another emergency
    other = _publish(
        day.photographer, day.other.topic, "emergency.raised",
        {"id": "cam-1", "kind": "fire", "text": "Smoke"},
    )  # fmt: skip
    assert other.payload["id"] == "cam-1"


def test_raise__an_id_already_used_on_the_topic_is_refused(day):
    first = _raise(day, day.florist, id="e-1")

    # by anyone else (who would then own the id) and by the raiser too
    for user in (day.photographer, day.florist):
        error = _refused(_raise, day, user, id="e-1")
        assert (error.code, error.extra["field"]) == ("invalid_payload", "payload.id")
    # also once resolved: an id names one emergency of the wedding
    _resolve(day, day.florist, "e-1")
    assert _refused(_raise, day, day.photographer, id="e-1").code == "invalid_payload"
    # a server-made id cannot be taken over either
    made = _raise(day, day.planner)
    assert _refused(_raise, day, day.florist, id=made.payload["id"]).code == "invalid_payload"
    assert Event.objects.filter(topic=day.topic, payload__id="e-1").count() == 2
    assert first.actor_user_id == day.florist.pk


def test_raise__a_repeat_with_its_idempotency_key_gets_its_first_seq(day):
    payload = {"id": "retry-1", "kind": "medical", "text": "A guest fainted"}

    first = event_publish(
        topic=day.topic, event="emergency.raised", payload=payload, user=day.florist,
        idempotency_key="k-retry-1",
    )  # fmt: skip
    again = event_publish(
        topic=day.topic, event="emergency.raised", payload=payload, user=day.florist,
        idempotency_key="k-retry-1",
    )  # fmt: skip

    assert (again.created, again.event.seq) == (False, first.event.seq)


# --- over the WebSocket -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
async def test_ws__a_vendor_is_refused_the_raiser_resolves(opened):  # noqa: F811
    from channels.db import database_sync_to_async

    day = await database_sync_to_async(make_day)()
    florist, _, _ = await opened(user=day.florist)
    photographer, _, _ = await opened(user=day.photographer)
    frame = {"type": "publish", "topic": day.topic}

    raised = await florist.request(
        {**frame, "event": "emergency.raised", "payload": {"kind": "fire", "text": "Smoke"}}
    )
    assert raised["status"] == "ok", raised
    stored = await database_sync_to_async(Event.objects.get)(topic=day.topic, seq=raised["seq"])
    emergency_id = stored.payload["id"]

    refused = await photographer.request(
        {**frame, "event": "emergency.resolved", "payload": {"id": emergency_id}}
    )
    reused = await photographer.request(
        {**frame, "event": "emergency.raised",
         "payload": {"id": emergency_id, "kind": "fire", "text": "Mine now"}}
    )  # fmt: skip
    resolved = await florist.request(
        {**frame, "event": "emergency.resolved", "payload": {"id": emergency_id}}
    )

    assert (refused["status"], refused["code"], refused.get("field")) == (
        "error", "forbidden", "payload.id"
    )  # fmt: skip
    assert (reused["code"], reused.get("field")) == ("invalid_payload", "payload.id")
    assert resolved == {
        "type": "reply", "ref": resolved["ref"], "status": "ok", "topic": day.topic,
        "seq": raised["seq"] + 1,
    }  # fmt: skip


# --- how many a member holds open ---------------------------------------------------------


def test_raise__a_member_holds_at_most_the_cap_open_then_resolves_one_first(day, settings):
    # given a cap of 2, and two open emergencies raised by the florist
    settings.REALTIME_OPEN_EMERGENCIES_PER_USER = 2
    first = _raise(day, day.florist)
    _raise(day, day.florist)

    # when the florist raises a third
    error = _refused(_raise, day, day.florist)

    # then it is refused (nothing stored), others are not held to the florist's count, and
    # once one is resolved the florist may raise again
    assert (error.code, error.extra["field"]) == ("limit_reached", "event")
    assert _raise(day, day.photographer).event == "emergency.raised"
    _resolve(day, day.florist, first.payload["id"])
    assert _raise(day, day.florist).event == "emergency.raised"


def test_raise__staff_are_not_capped(day, settings):
    settings.REALTIME_OPEN_EMERGENCIES_PER_USER = 1
    staff = make_user(is_staff=True)

    raised = [_raise(day, staff) for _ in range(3)]

    assert len({event.payload["id"] for event in raised}) == 3
