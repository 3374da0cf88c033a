"""The demand model: the calendar's load, the learned correction, the database read."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest

from monitoring.models import MetricSnapshot
from scaling.demand import (
    DEFAULT_WINDOW_AFTER,
    SLOT,
    TIMELINE_FLOOR,
    DemandParams,
    Observation,
    WeddingPlan,
    expected_connections,
    forecast,
    hour_of_week,
    learn_correction,
    load_profile,
)
from scaling.selectors import demand_inputs
from tests.factories import make_booking, make_item, make_supplier, make_wedding
from weddings.models import Wedding

UTC = dt.UTC
NO_BASELINE = DemandParams(baseline_connections=0.0)


def _at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _plan(ceremony: dt.datetime, vendors: int = 14, **extra) -> WeddingPlan:
    end = extra.pop("window_end_utc", ceremony + DEFAULT_WINDOW_AFTER)
    return WeddingPlan(ceremony_utc=ceremony, vendors=vendors, window_end_utc=end, **extra)


def _slot(fc, start: dt.datetime):
    return next(s for s in fc.slots if s.start_utc == start)


# --- the load profile and the calendar ---------------------------------------------


def test_load_profile__everyone_on_at_the_ceremony_nobody_outside_the_day():
    assert load_profile(0.0) == 1.0
    assert load_profile(-6.0) == 0.0 and load_profile(-12.0) == 0.0
    assert load_profile(10.0) == 0.0 and load_profile(30.0) == 0.0
    assert 0.0 < load_profile(-3.0) < load_profile(-1.0) < 1.0  # the morning ramp
    assert load_profile(3.0) < load_profile(5.0)  # the speeches are a second peak
    assert load_profile(-3.0) == pytest.approx(0.45)  # linear between the points


def test_forecast__48_hours_of_15_minute_slots_from_the_current_slot():
    fc = forecast([], _at(2026, 6, 13, 9, 7, 30))

    assert len(fc.slots) == 48 * 4
    assert fc.slots[0].start_utc == _at(2026, 6, 13, 9, 0)
    assert fc.slots[-1].start_utc == _at(2026, 6, 15, 8, 45)
    assert all(b.start_utc - a.start_utc == SLOT for a, b in itertools.pairwise(fc.slots))
    assert {s.connections for s in fc.slots} == {DemandParams().baseline_connections}


def test_forecast__sums_weddings_by_active_vendors_devices_and_profile():
    # given: two ceremonies at 14:00 UTC, 10 and 4 vendors, 1.5 devices each
    ceremony = _at(2026, 6, 13, 14, 0)
    plans = [_plan(ceremony, 10), _plan(ceremony, 4)]

    # when
    fc = forecast(plans, _at(2026, 6, 13, 7, 0), params=NO_BASELINE)

    # then: the slot 14:00-14:15 is measured at its middle (7.5 min after the vows)
    at_vows = _slot(fc, ceremony)
    assert at_vows.connections == pytest.approx(14 * 1.5 * 1.0)
    assert at_vows.deliveries_per_s == pytest.approx(14 * 1.5 * 0.05)
    assert _slot(fc, _at(2026, 6, 13, 7, 45)).connections == 0.0  # over 6 h before
    assert max(fc.slots, key=lambda s: s.connections).start_utc <= ceremony + dt.timedelta(hours=1)
    assert {p.wedding_id for p in fc.weddings} == {None}
    assert len(fc.weddings) == 2


def test_forecast__a_late_timeline_keeps_its_floor_until_its_end():
    ceremony = _at(2026, 6, 13, 14, 0)
    late = _plan(ceremony, 10, window_end_utc=ceremony + dt.timedelta(hours=13))

    fc = forecast([late], ceremony, params=NO_BASELINE)

    assert _slot(fc, ceremony + dt.timedelta(hours=12)).connections == pytest.approx(
        10 * 1.5 * TIMELINE_FLOOR
    )
    assert _slot(fc, ceremony + dt.timedelta(hours=13)).connections == 0.0


def test_forecast__seasonality_falls_out_of_the_calendar():
    # given: an October Saturday with 30 weddings, a February one with 2, same shape
    def saturday(day: dt.date, count: int) -> list[WeddingPlan]:
        return [_plan(dt.datetime.combine(day, dt.time(14), tzinfo=UTC)) for _ in range(count)]

    october, february = dt.date(2026, 10, 10), dt.date(2026, 2, 14)
    plans = saturday(october, 30) + saturday(february, 2)

    # when
    peak_oct = max(s.connections for s in forecast(plans, _at(2026, 10, 10, 0)).slots)
    peak_feb = max(s.connections for s in forecast(plans, _at(2026, 2, 14, 0)).slots)

    # then: no seasonal term anywhere, yet October's peak is ~15× February's
    baseline = DemandParams().baseline_connections
    assert (peak_oct - baseline) / (peak_feb - baseline) == pytest.approx(15.0)


# --- the learned correction ---------------------------------------------------------


def _readings(start: dt.datetime, slots: int, connections: float, deliveries=None):
    """One reading a minute for ``slots`` 15-minute slots, all at the same values."""
    return [
        Observation(start + dt.timedelta(minutes=m), connections, deliveries)
        for m in range(slots * 15)
    ]


def test_learn_correction__shrinks_toward_one_when_history_is_thin():
    # given: baseline 10 expected, 20 observed (ratio 2) in one hour-of-week
    monday_9 = _at(2026, 6, 8, 9, 0)

    # when
    thin = learn_correction([], _readings(monday_9, 1, 20.0))
    thick = learn_correction(
        [], [o for week in range(4) for o in _readings(monday_9 - dt.timedelta(weeks=week), 4, 20)]
    )

    # then: 1 slot of 8 prior weighs 1/9; 16 slots weigh 16/24
    how = hour_of_week(monday_9)
    assert thin.slots == {how: 1}
    assert thin.connections[how] == pytest.approx(1 + 1 / 9)
    assert thick.slots == {how: 16}
    assert thick.connections[how] == pytest.approx(1 + 16 / 24)
    assert thin.deliveries[how] == 1.0  # no deliveries measured: no correction


def test_learn_correction__clamps_a_wild_ratio_and_learns_deliveries_separately():
    monday_9 = _at(2026, 6, 8, 9, 0)
    readings = _readings(monday_9, 4, 10_000.0, deliveries=0.25)  # 1000× connections

    correction = learn_correction([], readings, DemandParams(prior_slots=0.0))

    assert max(correction.connections.values()) == 4.0  # clamped
    assert correction.deliveries[hour_of_week(monday_9)] == pytest.approx(0.5)  # 0.25 / 0.5


def test_forecast__applies_the_ratio_of_each_slots_hour_of_week_only():
    # given: last Monday 09:00-10:00 saw twice the baseline
    correction = learn_correction([], _readings(_at(2026, 6, 8, 9, 0), 4, 20.0))

    # when: forecasting the next Monday morning
    fc = forecast([], _at(2026, 6, 15, 8, 0), correction)

    # then
    ratio = correction.connections[hour_of_week(_at(2026, 6, 8, 9, 0))]
    assert _slot(fc, _at(2026, 6, 15, 9, 30)).connections == pytest.approx(10 * ratio)
    assert _slot(fc, _at(2026, 6, 15, 9, 30)).uncorrected_connections == 10.0
    assert _slot(fc, _at(2026, 6, 15, 10, 0)).connections == 10.0


def test_backtest__the_corrected_forecast_beats_the_calendar_alone_on_a_noisy_week():
    # given: the truth has more devices per vendor than the model thinks (2.2 vs 1.5),
    # office-hours planning traffic the model does not know, and 10 % noise
    rng = random.Random(7)
    truth = DemandParams(devices_per_vendor=2.2, baseline_connections=0.0)

    def office(at: dt.datetime) -> float:
        return 60.0 if at.weekday() < 5 and 8 <= at.hour < 18 else 15.0

    def calendar(week_start: dt.date, friday: int, saturday: int) -> list[WeddingPlan]:
        plans = []
        for day, count in ((4, friday), (5, saturday)):
            date = week_start + dt.timedelta(days=day)
            for i in range(count):
                hour = 12 + i % 5  # ceremonies from 12:00 to 16:00 UTC
                ceremony = dt.datetime.combine(date, dt.time(hour), tzinfo=UTC)
                plans.append(_plan(ceremony, rng.randint(8, 20)))
        return plans

    def observed(plans: list[WeddingPlan], at: dt.datetime) -> float:
        return (office(at) + expected_connections(plans, at, truth)) * rng.gauss(1.0, 0.1)

    this_monday = dt.date(2026, 10, 5)
    weeks = [(this_monday - dt.timedelta(weeks=n), n + 2, n + 7) for n in (3, 2, 1)]
    past = [p for monday, fri, sat in weeks for p in calendar(monday, fri, sat)]
    coming = calendar(this_monday, friday=5, saturday=12)
    start = dt.datetime.combine(weeks[0][0], dt.time(), tzinfo=UTC)
    history = [  # a reading every 5 minutes over the 3 weeks
        Observation(at, observed(past, at))
        for at in (start + dt.timedelta(minutes=5 * i) for i in range(3 * 7 * 24 * 12))
    ]
    now = dt.datetime.combine(this_monday + dt.timedelta(days=4), dt.time(), tzinfo=UTC)

    # when: learn from the last 3 weeks, forecast Friday and Saturday
    fc = forecast(past + coming, now, learn_correction(past, history))

    # then
    def mape(field: str) -> float:
        errors = []
        for s in fc.slots:
            actual = observed(coming, s.start_utc + SLOT / 2)
            errors.append(abs(getattr(s, field) - actual) / actual)
        return sum(errors) / len(errors)

    corrected, uncorrected = mape("connections"), mape("uncorrected_connections")
    assert corrected < 0.6 * uncorrected, (corrected, uncorrected)


# --- the database read --------------------------------------------------------------


@pytest.mark.django_db
def test_demand_inputs__ceremonies_in_utc_from_each_weddings_time_zone_across_dst():
    # given: London's clocks go forward on 29 March 2026, New York's on 8 March 2026
    before = make_wedding(date=dt.date(2026, 3, 28), ceremony_time=dt.time(14))
    after = make_wedding(date=dt.date(2026, 3, 29), ceremony_time=dt.time(14))
    new_york = make_wedding(
        date=dt.date(2026, 3, 29), ceremony_time=dt.time(14), time_zone="America/New_York"
    )
    # Auckland's Saturday 28 March 10:00 is still Friday in UTC (NZDT, UTC+13).
    auckland = make_wedding(
        date=dt.date(2026, 3, 28), ceremony_time=dt.time(10), time_zone="Pacific/Auckland"
    )

    # when
    plans, _ = demand_inputs(now=_at(2026, 3, 28, 0), history=dt.timedelta(days=1))

    # then
    ceremonies = {p.wedding_id: p.ceremony_utc for p in plans}
    assert ceremonies == {
        before.pk: _at(2026, 3, 28, 14),  # GMT
        after.pk: _at(2026, 3, 29, 13),  # BST
        new_york.pk: _at(2026, 3, 29, 18),  # EDT
        auckland.pk: _at(2026, 3, 27, 21),  # NZDT
    }
    assert all(p.ceremony_utc.tzinfo is UTC for p in plans)


@pytest.mark.django_db
def test_demand_inputs__counts_active_bookings_and_ends_the_window_with_the_timeline():
    # given
    wedding = make_wedding(date=dt.date(2026, 6, 13), ceremony_time=dt.time(14))
    bare = make_wedding(date=dt.date(2026, 6, 13), ceremony_time=dt.time(15))
    for active in (True, True, True, False):
        make_booking(supplier=make_supplier(), wedding=wedding, active=active)
    make_item(wedding=wedding, title="Vows", start=(14, 0))
    make_item(wedding=wedding, title="Last dance", start=(23, 30), minutes=60)
    make_item(wedding=wedding, title="Fireworks", start=(23, 45), minutes=120, status="cancelled")
    cancelled = make_wedding(date=dt.date(2026, 6, 13), status=Wedding.Status.CANCELLED)
    make_booking(supplier=make_supplier(), wedding=cancelled)
    far = make_wedding(date=dt.date(2026, 8, 1))

    # when
    plans, _ = demand_inputs(now=_at(2026, 6, 13, 6), history=dt.timedelta(days=7))

    # then: London is BST (UTC+1); the cancelled and the far wedding are not there
    by_id = {p.wedding_id: p for p in plans}
    assert set(by_id) == {wedding.pk, bare.pk}
    assert by_id[wedding.pk].vendors == 3
    assert by_id[wedding.pk].window_end_utc == _at(2026, 6, 13, 23, 30)  # 00:30 BST
    assert by_id[bare.pk].vendors == 0
    assert by_id[bare.pk].window_end_utc == _at(2026, 6, 13, 14) + DEFAULT_WINDOW_AFTER
    assert far.pk not in by_id


@pytest.mark.django_db
def test_demand_inputs__reads_the_metric_history_since_the_start_in_order():
    # given
    now = _at(2026, 6, 13, 12)
    for minutes_ago, connections in ((60 * 24 * 3, 1), (90, 40), (30, 50), (1, 60)):
        MetricSnapshot.objects.create(
            taken_at=now - dt.timedelta(minutes=minutes_ago),
            connections=connections,
            deliveries_per_s=connections / 10,
        )
    MetricSnapshot.objects.create(taken_at=now + dt.timedelta(minutes=1), connections=99)

    # when
    _, observations = demand_inputs(now=now, history=dt.timedelta(days=1))

    # then
    assert [(o.connections, o.deliveries_per_s) for o in observations] == [
        (40, 4.0),
        (50, 5.0),
        (60, 6.0),
    ]
    assert observations[0].at_utc == now - dt.timedelta(minutes=90)
