"""``manage.py deploy_guard``: refuses a deploy while weddings are live or about to be,
unless forced with a reason (recorded)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from realtime.models import Event
from tests.factories import make_wedding
from weddings.models import TimelineItem, Wedding

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(20)]


def _wedding(ceremony_in: dt.timedelta, **extra) -> Wedding:
    """A wedding in New York whose ceremony is ``ceremony_in`` from now (to the minute)."""
    at = (timezone.now() + ceremony_in).astimezone(zoneinfo.ZoneInfo("America/New_York"))
    return make_wedding(
        date=at.date(),
        ceremony_time=at.time().replace(second=0, microsecond=0),
        time_zone="America/New_York",
        **extra,
    )


def _guard(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("deploy_guard", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_deploy_guard__clear_when_no_wedding_is_near():
    # given: a wedding whose window opens in 8 h, beyond the default 6
    _wedding(dt.timedelta(hours=10))

    # when
    out, _ = _guard()

    # then
    assert out.startswith("clear: no wedding in progress or starting within 6 h")


def test_deploy_guard__blocks_and_lists_a_wedding_in_progress():
    # given
    live = _wedding(dt.timedelta(hours=-1), partner_one="Jo", partner_two="Kim")

    # when
    err = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("deploy_guard", stderr=err, stdout=StringIO())

    # then
    assert raised.value.returncode == 1
    text = err.getvalue()
    assert "deploy blocked: 1 wedding(s)" in text
    assert f"#{live.pk} Jo & Kim" in text
    assert "America/New_York" in text and "in progress" in text


def test_deploy_guard__hours_decides_how_far_ahead_it_looks():
    # given: the window opens in 1 h (ceremony in 3 h)
    _wedding(dt.timedelta(hours=3))

    # then
    out, _ = _guard("--hours", "0")
    assert out.startswith("clear")
    with pytest.raises(CommandError) as raised:
        _guard("--hours", "2")
    assert raised.value.returncode == 1


def test_deploy_guard__a_long_timeline_keeps_the_window_open():
    # given: the ceremony was 12 h ago (past the default 10 h), the party still runs
    wedding = _wedding(dt.timedelta(hours=-12))
    now = timezone.now()
    TimelineItem.objects.create(
        wedding=wedding, title="Last dance", starts_at=now - dt.timedelta(minutes=30),
        ends_at=now + dt.timedelta(hours=1),
    )  # fmt: skip

    # then
    with pytest.raises(CommandError) as raised:
        _guard("--hours", "0")
    assert raised.value.returncode == 1


def test_deploy_guard__ignores_cancelled_weddings():
    _wedding(dt.timedelta(hours=1), status=Wedding.Status.CANCELLED)
    out, _ = _guard()
    assert out.startswith("clear")


def test_deploy_guard__force_needs_a_reason():
    _wedding(dt.timedelta(hours=1))
    with pytest.raises(CommandError, match="--force needs --reason") as raised:
        _guard("--force", "--reason", "   ")
    assert raised.value.returncode == 2
    assert not Event.objects.filter(event="deploy.forced").exists()


def test_deploy_guard__force_with_a_reason_passes_and_is_recorded(caplog):
    # given
    live = _wedding(dt.timedelta(hours=1))

    # when
    out, _ = _guard("--force", "--reason", "security fix CVE-2026-1234")

    # then
    assert out.startswith("deploy forced (1 wedding(s) in window): security fix CVE-2026-1234")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("security fix CVE-2026-1234" in r.getMessage() for r in warnings)
    event = Event.objects.get(topic="ops", event="deploy.forced")
    assert event.priority == Event.Priority.CRITICAL
    assert event.payload["reason"] == "security fix CVE-2026-1234"
    assert event.payload["weddings"] == [live.pk]
    assert event.payload["hours"] == 6.0
