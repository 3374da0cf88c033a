"""Capacity reservations (ADR 0033): taken a day ahead for a forecast peak, followed while
the forecast moves, in force from their start (the decision's minimums, told to the
actuator) and released after their end."""

from __future__ import annotations

import datetime as dt
import shlex
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connections
from django.test import Client
from django.urls import reverse
from playwright.sync_api import expect

from core.wire import wire_time
from realtime.models import Event
from scaling.decisions import Capacity, CurrentMetrics, Reservation, ScalingPolicy, decide
from scaling.demand import Forecast
from scaling.models import CapacityReservation, ScalingDecision
from scaling.selectors import reservation_payload
from scaling.services import scaling_evaluate
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.servers import Server
from tests.web.conftest import Browse
from tests.web.conftest import browser as browser  # one Chromium for this module's test
from weddings.models import Wedding

UTC = dt.UTC
# Saturday 13 June 2026, 14:30 in London (BST, UTC+1).
NOW = dt.datetime(2026, 6, 13, 13, 30, tzinfo=UTC)
PYTHON = shlex.quote(sys.executable)
# Small processes make ten vendors a peak worth reserving for.
SMALL = ScalingPolicy(connections_per_process=10, connection_limit_per_process=15)


# --- decide(): the reservation as a floor (pure) ------------------------------------------


def _decide(*, reservations=(), capacity=None, connections=0, now=NOW):
    capacity = capacity or Capacity(asgi_processes=2, celery_workers=1, connection_limit=3000)
    empty = Forecast(made_at=now, slots=())
    return decide(
        empty, CurrentMetrics(connections=connections), capacity, ScalingPolicy(), now, reservations
    )


RESERVED = Reservation(
    id=7,
    peak_at=NOW + dt.timedelta(hours=1),
    asgi=6,
    workers=3,
    starts_at=NOW,
    ends_at=NOW + dt.timedelta(hours=4),
)


def test_decide__a_reservation_raises_the_minimum_within_its_span():
    decision = _decide(reservations=(RESERVED,))
    assert (decision.asgi_processes, decision.celery_workers) == (6, 3)
    assert decision.action == "scale_out"
    assert "reservation #7" in decision.reason
    assert "ASGI processes: held at the reserved minimum of 6" in decision.reason
    assert decision.inputs["reservation"]["asgi"] == 6


def test_decide__a_reservation_does_nothing_before_its_start():
    decision = _decide(reservations=(RESERVED,), now=NOW - dt.timedelta(minutes=1))
    assert (decision.asgi_processes, decision.celery_workers) == (2, 1)
    assert "reservation" not in decision.reason and "reservation" not in decision.inputs


def test_decide__after_its_end_the_reserved_capacity_may_scale_in():
    # given: the reserved capacity running, long after the last change
    running = Capacity(asgi_processes=6, celery_workers=3, connection_limit=9000)

    # when
    within = _decide(reservations=(RESERVED,), capacity=running, now=RESERVED.ends_at - _MIN)
    after = _decide(reservations=(RESERVED,), capacity=running, now=RESERVED.ends_at)

    # then: held within, released (one step, no forecast) at the end
    assert within.asgi_processes == 6 and within.action == "hold"
    assert after.asgi_processes == 5 and after.action == "scale_in"


_MIN = dt.timedelta(minutes=1)


def test_decide__a_reservation_never_lowers_a_scale_out():
    # 8000 connections with 30 % headroom need 11 processes; the reservation holds 6
    decision = _decide(reservations=(RESERVED,), connections=8000)
    assert decision.asgi_processes == 11
    assert "ASGI processes: held at the reserved minimum" not in decision.reason


def test_decide__a_reservation_is_bounded_by_the_maximum():
    huge = Reservation(**{**RESERVED.__dict__, "asgi": 400, "workers": 300})
    decision = _decide(reservations=(huge,))
    assert (decision.asgi_processes, decision.celery_workers) == (40, 20)


# --- scaling_evaluate(): planned, followed, in force, released ------------------------------


def _tomorrows_wedding(ceremony: dt.time = dt.time(13, 0)) -> Wedding:
    """Ten vendors at a ceremony at 13:00 London (12:00 UTC) on Sunday 14 June: 22.5 h
    after NOW, without a timeline, so its window ends at 22:00 UTC."""
    wedding = make_wedding(date=dt.date(2026, 6, 14), ceremony_time=ceremony)
    for _ in range(10):
        make_booking(supplier=make_supplier(), wedding=wedding)
    return wedding


def _reserved_events() -> list[dict]:
    return [
        e.payload
        for e in Event.objects.filter(topic="ops", event="scaling.reserved").order_by("seq")
    ]


@pytest.mark.django_db
def test_evaluate__a_peak_tomorrow_is_reserved_once_and_followed_then_cancelled():
    # given
    wedding = _tomorrows_wedding()

    # when: the evaluation sees the peak within 24 h, twice
    scaling_evaluate(now=NOW, policy=SMALL)
    scaling_evaluate(now=NOW + _MIN, policy=SMALL)

    # then: one planned reservation, from an hour before the peak to the window's end
    row = CapacityReservation.objects.get()
    assert row.status == CapacityReservation.Status.PLANNED
    assert row.peak_at.date() == dt.date(2026, 6, 14)
    assert row.asgi_processes > SMALL.min_asgi
    assert row.starts_at == row.peak_at - dt.timedelta(hours=1)
    assert row.ends_at == dt.datetime(2026, 6, 14, 22, 0, tzinfo=UTC)
    assert row.weddings == [wedding.pk]
    assert row.forecast_made_at == NOW
    assert [(e["id"], e["change"]) for e in _reserved_events()] == [(row.pk, "planned")]
    # and: nothing is in force yet, so the capacity stays at the minimums
    assert ScalingDecision.objects.latest().asgi_processes == SMALL.min_asgi

    # when: the ceremony moves two hours later
    Wedding.objects.filter(pk=wedding.pk).update(ceremony_time=dt.time(15, 0))
    scaling_evaluate(now=NOW + 2 * _MIN, policy=SMALL)

    # then: the same reservation, moved
    moved = CapacityReservation.objects.get()
    assert moved.pk == row.pk
    assert moved.peak_at == row.peak_at + dt.timedelta(hours=2)
    assert moved.ends_at == row.ends_at + dt.timedelta(hours=2)
    assert _reserved_events()[-1]["change"] == "updated"
    assert dt.datetime.fromisoformat(_reserved_events()[-1]["peak_at"]) == moved.peak_at

    # when: the wedding is cancelled
    Wedding.objects.filter(pk=wedding.pk).update(status=Wedding.Status.CANCELLED)
    scaling_evaluate(now=NOW + 3 * _MIN, policy=SMALL)

    # then
    gone = CapacityReservation.objects.get()
    assert gone.status == CapacityReservation.Status.CANCELLED
    assert "the peak left the forecast" in gone.reason
    assert _reserved_events()[-1]["change"] == "cancelled"


@pytest.mark.django_db
def test_evaluate__at_its_start_the_actuator_gets_the_reserved_minimum_and_after_its_end_not(
    settings, tmp_path
):
    # given: the command actuator appends its arguments to a file; reservations start
    # 3 h before their peak, earlier than the forecast's 1 h pre-scaling
    applied = tmp_path / "applied.txt"
    script = "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + chr(10))"
    settings.SCALING_ACTUATOR = "command"
    settings.SCALING_COMMAND_TEMPLATE = (
        f"{PYTHON} -c {shlex.quote(script)} {shlex.quote(str(applied))} "
        "{asgi} {workers} {min_asgi} {min_workers}"
    )
    settings.SCALING_RESERVATION_LEAD = 3.0
    _tomorrows_wedding()
    scaling_evaluate(now=NOW, policy=SMALL)
    row = CapacityReservation.objects.get()
    assert row.starts_at == row.peak_at - dt.timedelta(hours=3)
    assert applied.read_text().splitlines() == ["2 1 2 1"]  # the baseline

    # when: a minute before its start, then at its start
    before = scaling_evaluate(now=row.starts_at - _MIN, policy=SMALL)
    at_start = scaling_evaluate(now=row.starts_at, policy=SMALL)

    # then: nothing before; at the start the decision goes to the reserved capacity and
    # the actuator is told the reserved minimums
    assert before is None or before.asgi_processes < row.asgi_processes
    row.refresh_from_db()
    assert row.status == CapacityReservation.Status.ACTIVE and row.activated_at == row.starts_at
    assert at_start.asgi_processes == row.asgi_processes
    assert at_start.actuator_status == ScalingDecision.Status.APPLIED
    assert f"reservation #{row.pk} active" in at_start.reason
    assert at_start.inputs["reservations"] == [{"id": row.pk, "change": "active"}]
    asgi, workers = row.asgi_processes, row.celery_workers
    assert applied.read_text().splitlines()[-1] == f"{asgi} {workers} {asgi} {workers}"
    decided = Event.objects.filter(topic="ops", event="scaling.decided").order_by("seq").last()
    assert decided.payload["id"] == at_start.pk

    # when: at its end
    after = scaling_evaluate(now=row.ends_at, policy=SMALL)

    # then: released, and the actuator is told the policy's minimums again
    row.refresh_from_db()
    assert row.status == CapacityReservation.Status.RELEASED and row.closed_at == row.ends_at
    assert f"reservation #{row.pk} released" in after.reason
    assert applied.read_text().splitlines()[-1].endswith(" 2 1")
    assert [e["change"] for e in _reserved_events()] == ["planned", "active", "released"]


@pytest.mark.django_db
def test_desired_api__lists_the_reservations(settings):
    # given
    settings.SCALING_API_TOKEN = "k" * 32
    _tomorrows_wedding()
    scaling_evaluate(now=NOW, policy=SMALL)
    row = CapacityReservation.objects.get()

    auth = {"HTTP_AUTHORIZATION": "Bearer " + "k" * 32}

    # when
    body = Client().get(reverse("scaling-desired"), {"include": "reservations"}, **auth)
    plain = Client().get(reverse("scaling-desired"), **auth)
    bad = Client().get(reverse("scaling-desired"), {"include": "x" * 5000}, **auth)

    # then
    assert body.status_code == 200
    (listed,) = body.json()["reserved"]
    assert listed["id"] == row.pk and listed["status"] == "planned"
    assert listed["asgi"] == row.asgi_processes
    assert listed["peak_at"] == wire_time(row.peak_at)
    assert body.json()["minimum"] == {"asgi": 2, "workers": 1}
    # and: what KEDA polls stays the four figures
    assert set(plain.json()) == {"asgi", "workers", "connection_limit", "decided_at"}
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    assert len(bad.content) < 300


@pytest.mark.django_db
def test_dashboard_overview__shows_the_reservations():
    from monitoring.selectors import metrics_overview

    # given
    _tomorrows_wedding()
    scaling_evaluate(now=NOW, policy=SMALL)

    # when
    body = metrics_overview()

    # then
    (shown,) = body["reservations"]
    assert shown["status"] == "planned" and shown["asgi"] > 2


@pytest.mark.django_db
def test_admin__lists_reservations_read_only(admin_client):
    # given
    _tomorrows_wedding()
    scaling_evaluate(now=NOW, policy=SMALL)

    # when
    page = admin_client.get("/admin/scaling/capacityreservation/")

    # then
    assert page.status_code == 200
    assert b"Planned" in page.content
    assert admin_client.get("/admin/scaling/capacityreservation/add/").status_code == 403


@pytest.mark.django_db
def test_evaluate__an_active_reservation_is_withdrawn_when_its_weddings_are_cancelled(settings):
    # given: a reservation in force
    settings.SCALING_RESERVATION_LEAD = 3.0
    wedding = _tomorrows_wedding()
    scaling_evaluate(now=NOW, policy=SMALL)
    row = CapacityReservation.objects.get()
    scaling_evaluate(now=row.starts_at, policy=SMALL)

    # when: its only wedding is cancelled
    Wedding.objects.filter(pk=wedding.pk).update(status=Wedding.Status.CANCELLED)
    withdrawn = scaling_evaluate(now=row.starts_at + _MIN, policy=SMALL)

    # then: cancelled before its end, said on ops and in the decision that follows
    row.refresh_from_db()
    assert row.status == CapacityReservation.Status.CANCELLED and row.closed_at < row.ends_at
    assert "no wedding is left in it" in row.reason
    assert [e["change"] for e in _reserved_events()] == ["planned", "active", "withdrawn"]
    assert f"reservation #{row.pk} withdrawn" in withdrawn.reason
    assert "min_asgi=2 min_workers=1" in withdrawn.actuator_output


# --- the staff dashboard's panel, in Chromium against a real server -------------------------


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Server]:
    running = Server("uvicorn", CACHE_NAMESPACE=f"test-resv-{uuid.uuid4().hex[:12]}")
    yield running
    running.stop()


@pytest.fixture
def browse(browser: Any, server: Server, transactional_db: Any) -> Iterator[Browse]:
    session = Browse(server, browser)
    yield session
    session.close()
    assert not session.errors, "JavaScript errors:\n" + "\n".join(session.errors)


def _off_loop(fn: Any, /, *args: Any) -> Any:
    """Run ``fn`` in a thread of its own (Playwright's loop runs in this one)."""
    with ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(fn, *args).result(timeout=30)
        finally:
            pool.submit(connections.close_all).result(timeout=30)


# Chromium too (tests/web/conftest.py's ``browser`` marker is not registered for this
# directory); ``slow`` says it starts a server process.
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_dashboard__lists_a_reservation_and_drops_it_when_cancelled_live(browse: Browse):
    # given: a planned reservation for tomorrow's peak (stored as the evaluation would)
    from realtime.services import event_publish_system

    now = dt.datetime.now(UTC).replace(second=0, microsecond=0)
    row = CapacityReservation.objects.create(
        peak_at=now + dt.timedelta(hours=20), connections=4200, asgi_processes=6,
        celery_workers=2, starts_at=now + dt.timedelta(hours=19),
        ends_at=now + dt.timedelta(hours=28), forecast_made_at=now, weddings=[1, 2],
    )  # fmt: skip
    staff = make_user(username=f"staff{uuid.uuid4().hex[:6]}", is_staff=True)

    # when: staff open the dashboard
    page = browse.open(staff, "/admin/monitoring/dashboard/", live=False)

    # then: the panel shows it
    shown = page.locator(f'#reservations li[data-reservation-id="{row.pk}"]')
    expect(shown).to_contain_text("6 server processes · 2 workers · planned")
    expect(shown).to_contain_text("4200 connections · 2 wedding(s)")

    # when: it is cancelled, live on ops
    expect(page.locator("#live")).to_have_attribute("data-socket", "live")
    row.status = CapacityReservation.Status.CANCELLED
    row.save(update_fields=["status"])
    payload = reservation_payload(row, "cancelled")
    _off_loop(event_publish_system, "ops", "scaling.reserved", payload)

    # then: it leaves the panel (the list is only its empty line: one render)
    expect(page.locator("#reservations")).to_contain_text("No peak reserved", timeout=20_000)
