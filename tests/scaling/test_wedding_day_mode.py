"""Wedding-day mode: switched by a service or the admin, logged, read through the cache."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from scaling.models import WeddingDayModeChange
from scaling.selectors import wedding_day_mode
from scaling.services import wedding_day_mode_set
from tests.factories import make_user

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(30)]


@pytest.fixture
def boss():
    return make_user(username="boss", is_staff=True, is_superuser=True)


def _admin(user) -> Client:
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    client.force_login(user)
    return client


def test_wedding_day_mode__off_when_never_set():
    assert wedding_day_mode() == {
        "enabled": False,
        "reason": "",
        "changed_by": None,
        "changed_at": None,
    }


def test_wedding_day_mode_set__switches_and_logs_each_change(boss):
    # when
    on = wedding_day_mode_set(enabled=True, reason="  Saturday, 40 weddings  ", user=boss)
    mode_on = wedding_day_mode()
    wedding_day_mode_set(enabled=False, reason="all done", user=None)
    mode_off = wedding_day_mode()

    # then
    assert on.changed_by == boss
    assert mode_on["enabled"] is True
    assert mode_on["reason"] == "Saturday, 40 weddings"
    assert mode_on["changed_by"] == {"id": boss.pk, "username": "boss"}
    assert mode_on["changed_at"].endswith("Z")
    assert mode_off["enabled"] is False
    assert mode_off["changed_by"] is None
    log = list(WeddingDayModeChange.objects.values_list("enabled", "reason"))
    assert log == [(False, "all done"), (True, "Saturday, 40 weddings")]  # newest first


def test_wedding_day_mode__read_from_the_cache_until_changed(boss, django_assert_num_queries):
    # given
    wedding_day_mode_set(enabled=True, reason="Saturday", user=boss)
    assert wedding_day_mode()["enabled"] is True

    # when / then: cached
    with django_assert_num_queries(0):
        assert wedding_day_mode()["enabled"] is True

    # when / then: a change drops the cached value
    wedding_day_mode_set(enabled=False, reason="quiet again", user=boss)
    assert wedding_day_mode()["enabled"] is False


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501, None])
def test_wedding_day_mode_set__reason_is_required_and_bounded(boss, reason):
    with pytest.raises(ValidationError) as info:
        wedding_day_mode_set(enabled=True, reason=reason, user=boss)

    assert "reason" in info.value.message_dict
    assert not WeddingDayModeChange.objects.exists()


def test_wedding_day_mode_set__reason_of_500_characters_is_accepted(boss):
    change = wedding_day_mode_set(enabled=True, reason="x" * 500, user=boss)

    assert len(change.reason) == 500


def test_admin__add_sets_changed_by_to_the_staff_member(boss):
    # given
    client = _admin(boss)
    wedding_day_mode()  # cached "off"

    # when
    response = client.post(
        reverse("admin:scaling_weddingdaymodechange_add"),
        {"enabled": "on", "reason": "Bank holiday Saturday"},
    )

    # then
    assert response.status_code == 302, response.content
    change = WeddingDayModeChange.objects.get()
    assert change.changed_by == boss
    assert change.enabled is True
    assert wedding_day_mode()["enabled"] is True


def test_admin__rows_are_read_only_and_the_list_shows_who_when_why(boss):
    # given
    change = wedding_day_mode_set(enabled=True, reason="Saturday", user=boss)
    client = _admin(boss)

    # when
    listing = client.get(reverse("admin:scaling_weddingdaymodechange_changelist"))
    page = client.get(reverse("admin:scaling_weddingdaymodechange_change", args=[change.pk]))
    edit = client.post(
        reverse("admin:scaling_weddingdaymodechange_change", args=[change.pk]),
        {"enabled": "", "reason": "rewritten"},
    )
    delete = client.post(
        reverse("admin:scaling_weddingdaymodechange_delete", args=[change.pk]), {"post": "yes"}
    )

    # then
    assert listing.status_code == 200
    assert b"Saturday" in listing.content and b"boss" in listing.content
    assert page.status_code == 200
    assert edit.status_code == 403
    assert delete.status_code == 403
    change.refresh_from_db()
    assert (change.enabled, change.reason) == (True, "Saturday")


def test_admin__vendor_is_refused():
    client = _admin(make_user())

    response = client.get(reverse("admin:scaling_weddingdaymodechange_changelist"))

    assert response.status_code == 302
