"""The scaling backtest: the synthetic calendar, the error and cost accounting, the command."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command

from bench.backtest import (
    SLOTS_PER_DAY,
    RollingCorrection,
    calendar_shares,
    capacity_cost,
    mape,
    model_expected,
    synthetic_history,
    wedding_calendar,
)
from scaling.demand import DemandParams, Observation, hour_of_week, learn_correction

UTC = dt.UTC


def test_wedding_calendar__shares_match_the_industry_calendar():
    # given a seeded year of 5,000 weddings
    weddings = wedding_calendar(2025, 5000, random.Random(3))

    # when
    shares = calendar_shares(weddings)

    # then
    assert len(weddings) == 5000
    assert shares["saturday"] == pytest.approx(0.60, abs=0.03)
    assert shares["october"] == pytest.approx(0.20, abs=0.02)
    assert shares["february"] == pytest.approx(0.03, abs=0.01)


def test_wedding_calendar__ceremonies_mostly_between_11_and_17_local_with_about_14_vendors():
    weddings = wedding_calendar(2025, 2000, random.Random(4))
    local_hours = [w.booked_ceremony_utc.astimezone(ZoneInfo(w.time_zone)).hour for w in weddings]
    assert sum(11 <= h <= 17 for h in local_hours) / len(weddings) > 0.8
    vendors = [w.vendors for w in weddings]
    assert 13 <= sum(vendors) / len(vendors) <= 15
    assert min(vendors) < 10 < 18 < max(vendors)  # it varies
    devices = sum(w.devices_per_vendor for w in weddings) / len(weddings)
    assert devices > DemandParams().devices_per_vendor + 0.3  # something for the correction


def test_synthetic_history__is_repeatable_for_a_seed():
    a = synthetic_history(dt.date(2025, 3, 1), 3, seed=11, weddings_per_year=500)
    b = synthetic_history(dt.date(2025, 3, 1), 3, seed=11, weddings_per_year=500)
    c = synthetic_history(dt.date(2025, 3, 1), 3, seed=12, weddings_per_year=500)
    assert a.connections == b.connections and len(a.connections) == 3 * SLOTS_PER_DAY
    assert a.connections != c.connections


def test_synthetic_history__storm_and_viral_day_are_recorded():
    history = synthetic_history(dt.date(2025, 5, 31), 160, seed=5, weddings_per_year=300)
    kinds = {e["event"]: e for e in history.events}
    assert kinds["viral"]["date"] == "2025-06-07"  # the first June Saturday
    assert kinds["storm"]["date"] == "2025-10-25"  # the last October Saturday


def test_mape__mean_of_absolute_percentage_errors_over_slots_above_the_floor():
    truth = [50.0, 200.0, 400.0, 1000.0]
    fc = [0.0, 220.0, 300.0, 1000.0]
    # the first slot is under the floor and ignored: (10 % + 25 % + 0 %) / 3
    assert mape(fc, truth, min_truth=100) == pytest.approx(35.0 / 3)
    assert mape(fc, truth, min_truth=5000) is None


def test_capacity_cost__counts_15_minute_slots_above_capacity_and_process_hours():
    # given four slots, 1,000 connections per process
    processes = [2, 2, 3, 4]
    truth = [1500.0, 2500.0, 3000.0, 3900.0]

    # when
    under, hours = capacity_cost(processes, truth, per_process=1000)

    # then: only the second slot (2,500 > 2,000) is short; exactly full is not short
    assert under == 15
    assert hours == pytest.approx((2 + 2 + 3 + 4) / 4)


def test_rolling_correction__equals_learn_correction_on_the_same_window():
    # given two days of history and the model's expectation
    params = DemandParams()
    history = synthetic_history(dt.date(2025, 6, 6), 2, seed=2, weddings_per_year=4000)
    expected = model_expected(history, params)
    rolling = RollingCorrection(params)
    for t in range(history.slots):
        rolling.update(
            hour_of_week(history.at(t)), history.connections[t], expected[t], history.deliveries[t]
        )

    # when
    fast = rolling.correction()
    slow = learn_correction(
        history.plans,
        [
            Observation(history.at(t), history.connections[t], history.deliveries[t])
            for t in range(history.slots)
        ],
        params,
    )

    # then
    assert fast.connections.keys() == slow.connections.keys()
    for how, ratio in slow.connections.items():
        assert fast.connections[how] == pytest.approx(ratio, rel=1e-9)
        assert fast.deliveries[how] == pytest.approx(slow.deliveries[how], rel=1e-9)


def test_scaling_backtest__short_run_writes_valid_json(tmp_path):
    # given
    path = tmp_path / "backtest.json"
    out, err = io.StringIO(), io.StringIO()

    # when
    call_command(
        "scaling_backtest",
        "--days",
        "14",
        "--seed",
        "3",
        "--start",
        "2025-06-01",
        "--without-protocol",
        "--json",
        str(path),
        stdout=out,
        stderr=err,
    )

    # then
    result = json.loads(path.read_text())
    assert result["days"] == 14 and result["parameters"]["seed"] == 3
    assert result["scored_from"] == "2025-06-08"
    for name in ("demand_model", "seasonal_naive", "reactive_last_value"):
        assert result["forecasts"][name]["mape_pct"] >= 0
    for name in ("demand_model", "reactive_only", "demand_model_no_protocol"):
        policy = result["policies"][name]
        assert policy["under_capacity_minutes"] >= 0
        assert policy["process_hours"] >= 7 * 24 * 2  # never below the 2-process minimum
    assert "demand_model" in out.getvalue() and "day 14/14" in err.getvalue()
