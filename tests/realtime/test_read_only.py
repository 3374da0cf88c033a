"""Read-only (maintenance) mode: audited, refuses writes with the reason, reads go on."""

from __future__ import annotations

import orjson
import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from realtime import services
from realtime.errors import RealtimeError
from realtime.models import Event, ReadOnlyModeChange
from realtime.selectors import read_only_mode
from tests.factories import make_booking, make_supplier, make_user, make_wedding

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    vendor = make_user()
    wedding = make_wedding()
    make_booking(supplier=make_supplier(users=(vendor,)), wedding=wedding)
    return {"vendor": vendor, "wedding": wedding, "topic": wedding.topic}


def publish(world, text: str, key: str | None = None):
    return services.event_publish(
        topic=world["topic"], event="message.posted", payload={"text": text},
        user=world["vendor"], idempotency_key=key,
    )  # fmt: skip


def test_read_only_mode__off_when_never_set() -> None:
    assert read_only_mode()["enabled"] is False


def test_read_only_on__publish_refused_with_the_reason_nothing_stored(world) -> None:
    services.read_only_mode_set(enabled=True, reason="database upgrade", user=None)

    with pytest.raises(RealtimeError) as info:
        publish(world, "hello")

    assert info.value.code == "unavailable"
    assert "read-only for maintenance (database upgrade)" in info.value.message
    assert info.value.extra == {"read_only": True}
    assert Event.objects.count() == 0


def test_read_only_on__ack_refused(world) -> None:
    seq = publish(world, "hello").event.seq
    services.read_only_mode_set(enabled=True, reason="upgrade", user=None)

    with pytest.raises(RealtimeError) as info:
        services.ack_record(user=world["vendor"], topic=world["topic"], seq=seq)

    assert info.value.code == "unavailable"


def test_read_only_on__idempotent_repeat_still_answers_the_first_seq(world) -> None:
    first = publish(world, "hello", key="k1")
    services.read_only_mode_set(enabled=True, reason="upgrade", user=None)

    again = publish(world, "hello", key="k1")

    assert (again.event.seq, again.created) == (first.event.seq, False)


def test_read_only_off_again__publishes_resume(world) -> None:
    boss = make_user(is_staff=True)
    services.read_only_mode_set(enabled=True, reason="upgrade", user=boss)
    services.read_only_mode_set(enabled=False, reason="done", user=boss)

    stored = publish(world, "back")

    assert stored.event.seq == 1
    assert list(ReadOnlyModeChange.objects.values_list("enabled", "changed_by")) == [
        (False, boss.pk),
        (True, boss.pk),
    ]


@pytest.mark.parametrize("reason", ["", "  ", "x" * 501, None])
def test_read_only_mode_set__reason_required_and_bounded(reason) -> None:
    with pytest.raises(ValidationError):
        services.read_only_mode_set(enabled=True, reason=reason, user=None)

    assert ReadOnlyModeChange.objects.count() == 0


@pytest.mark.django_db(transaction=True)  # the snapshot read loads in database threads
def test_http_publish__read_only__503_with_the_reason(world) -> None:
    services.read_only_mode_set(enabled=True, reason="failover drill", user=None)
    client = Client()
    client.force_login(world["vendor"])

    response = client.post(
        f"/api/weddings/{world['wedding'].pk}/events",
        data=orjson.dumps({"event": "message.posted", "payload": {"text": "x"}}),
        content_type="application/json",
    )
    snapshot = client.get(f"/api/weddings/{world['wedding'].pk}/")

    assert response.status_code == 503
    body = orjson.loads(response.content)["error"]
    assert body["code"] == "unavailable" and "failover drill" in body["message"]
    assert snapshot.status_code == 200  # reads go on


def test_admin__staff_switch_it_and_the_change_is_stamped() -> None:
    boss = make_user(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(boss)

    response = client.post(
        "/admin/realtime/readonlymodechange/add/", {"enabled": "on", "reason": "maintenance"}
    )

    assert response.status_code == 302
    change = ReadOnlyModeChange.objects.get()
    assert (change.enabled, change.reason, change.changed_by) == (True, "maintenance", boss)
    assert read_only_mode()["enabled"] is True


def test_admin__vendor_cannot_switch_it(world) -> None:
    client = Client()
    client.force_login(world["vendor"])

    response = client.post(
        "/admin/realtime/readonlymodechange/add/", {"enabled": "on", "reason": "x"}
    )

    assert response.status_code == 302  # to the admin login
    assert ReadOnlyModeChange.objects.count() == 0
