"""The scaling backtest: the synthetic calendar, the error and cost accounting, the command."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command

from bench.backtest import (
    SLOTS_PER_DAY,
    RollingCorrection,
    calendar_shares,
    capacity_cost,
    mape,
    model_expected,
    profile_share,
    synthetic_history,
    wedding_calendar,
    wedding_profile,
)
from scaling.demand import (
    LOAD_PROFILE,
    DemandParams,
    Observation,
    hour_of_week,
    learn_correction,
)

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


def test_wedding_profile__differs_from_the_models_within_its_ranges():
    # given
    rng = random.Random(5)

    # when
    profiles = [wedding_profile(rng) for _ in range(200)]

    # then: every vows plateau is kept, each shape is the wedding's own
    model = list(LOAD_PROFILE)
    assert all(p[3][1] == p[4][1] == 1.0 for p in profiles)
    assert all(list(p) != model for p in profiles)
    assert len({p[6][1] for p in profiles}) == 200  # the evening peaks differ
    starts = [p[0][0] for p in profiles]
    assert min(starts) < -7 < -5.5 < max(starts)  # ramps earlier and later than the model's -6 h
    assert all(0.5 <= p[6][1] <= 1.0 and 0.45 <= p[5][1] <= 0.85 for p in profiles)
    assert profile_share(profiles[0], 0.0) == 1.0
    assert profile_share(profiles[0], profiles[0][-1][0] + 1) == 0.0


def test_synthetic_history__own_profiles_change_the_load_not_the_calendar():
    # given the same seed with and without the weddings' own profiles
    own = synthetic_history(dt.date(2025, 6, 1), 7, seed=11, weddings_per_year=2000)
    model = synthetic_history(
        dt.date(2025, 6, 1), 7, seed=11, weddings_per_year=2000, model_profile=True
    )

    # then: the same weddings booked, another load
    assert own.plans == model.plans and own.weddings == model.weddings > 0
    assert own.connections != model.connections
    assert sum(own.connections) == pytest.approx(sum(model.connections), rel=0.25)


def test_scaling_backtest__refuses_a_negative_price():
    with pytest.raises(CommandError, match="must be ≥ 0"):
        call_command("scaling_backtest", "--days", "1", "--price-per-process-hour", "-1")


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


def _mape_and_bias(forecast: list[float], truth: list[float], floor: float) -> tuple[float, float]:
    """MAPE and mean signed error in per cent over the slots above ``floor``, by definition."""
    pairs = [(f, y) for f, y in zip(forecast, truth, strict=True) if y > floor]
    mape_pct = 100 * sum(abs(f - y) / y for f, y in pairs) / len(pairs)
    bias_pct = 100 * sum((f - y) / y for f, y in pairs) / len(pairs)
    return mape_pct, bias_pct


def test_scaling_backtest__short_run_writes_the_figures_of_its_history_as_json(tmp_path):
    # given two weeks from Sunday 1 June 2025: the first week is the warm-up (and the
    # week seasonal-naive looks back to), the second is scored; the viral first June
    # Saturday (the 7th) falls in the warm-up, the day after it in the scored week
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
        "--price-per-process-hour",
        "0.5",
        "--price-per-worker-hour",
        "0.25",
        "--json",
        str(path),
        stdout=out,
        stderr=err,
    )

    # then: what was asked for, and the figures of the same seeded history computed here
    result = json.loads(path.read_text())
    history = synthetic_history(dt.date(2025, 6, 1), 14, seed=3, weddings_per_year=5000)
    lo, floor = 7 * SLOTS_PER_DAY, 100.0
    series = history.connections
    truth = series[lo:]
    assert result["parameters"] == {
        "days": 14,
        "seed": 3,
        "start": "2025-06-01",
        "weddings_per_year": 5000,
        "history_weeks": 8,
        "min_truth": floor,
        "without_protocol": True,
        "model_profile": False,
        "price_per_process_hour": 0.5,
        "price_per_worker_hour": 0.25,
    }
    assert (result["start"], result["days"], result["scored_from"]) == (
        "2025-06-01", 14, "2025-06-08"
    )  # fmt: skip
    assert result["weddings"] == history.weddings > 0
    assert result["slots_scored"] == sum(y > floor for y in truth) > 0
    assert result["peak_connections"] == pytest.approx(max(truth))
    assert [(e["event"], e["date"]) for e in result["events"]] == [("viral", "2025-06-07")]

    # the baselines' errors: seasonal-naive is the same slot a week before, reactive the
    # slot before
    forecasts = result["forecasts"]
    assert set(forecasts) == {
        "demand_model", "demand_model_uncorrected", "seasonal_naive", "reactive_last_value"
    }  # fmt: skip
    week_before = series[lo - 7 * SLOTS_PER_DAY : -7 * SLOTS_PER_DAY]
    naive_mape, naive_bias = _mape_and_bias(week_before, truth, floor)
    last_mape, last_bias = _mape_and_bias(series[lo - 1 : -1], truth, floor)
    assert forecasts["seasonal_naive"]["mape_pct"] == pytest.approx(naive_mape)
    assert forecasts["seasonal_naive"]["bias_pct"] == pytest.approx(naive_bias)
    assert forecasts["reactive_last_value"]["mape_pct"] == pytest.approx(last_mape)
    assert forecasts["reactive_last_value"]["bias_pct"] == pytest.approx(last_bias)
    model_mape = forecasts["demand_model"]["mape_pct"]
    assert model_mape > 0 and forecasts["demand_model_uncorrected"]["mape_pct"] > 0
    assert result["model_vs_naive_mape_reduction_pct"] == pytest.approx(
        100 * (1 - model_mape / naive_mape)
    )

    # each policy over the scored week of 672 slots of 15 minutes, within the policy's
    # bounds (2 to 40 processes, 1 to 20 workers)
    week_slots, week_minutes = 7 * SLOTS_PER_DAY, 7 * 24 * 60
    assert set(result["policies"]) == {"demand_model", "reactive_only", "demand_model_no_protocol"}
    for name, policy in result["policies"].items():
        for key in ("under_capacity_minutes", "over_connection_limit_minutes",
                    "worker_short_minutes"):  # fmt: skip
            assert 0 <= policy[key] <= week_minutes and policy[key] % 15 == 0, (name, key)
        assert 2 <= policy["peak_processes"] <= 40, name
        # process-hours: a quarter hour per process and slot, never below the minimum of
        # 2 processes nor above the peak all week
        assert (policy["process_hours"] * 4) == int(policy["process_hours"] * 4), name
        assert 2 * week_slots / 4 <= policy["process_hours"] <= policy["peak_processes"] * 168, name
        assert 1 * week_slots / 4 <= policy["worker_hours"] <= 20 * week_slots / 4, name
        assert policy["changes"] >= 0
        # the cost model: process-hours and worker-hours at their prices
        expected_cost = policy["process_hours"] * 0.5 + policy["worker_hours"] * 0.25
        assert policy["cost"] == pytest.approx(expected_cost), name
    in_window = result["share_of_time_a_wedding_in_window_pct"]
    assert 0 < in_window <= 100  # a June fortnight has weddings in their window

    # the day after the viral Saturday is scored as an event day, with its own figures
    assert [(e["event"], e["date"]) for e in result["event_days"]] == [("viral", "2025-06-08")]
    day = result["event_days"][0]
    day_truth = series[lo : lo + SLOTS_PER_DAY]
    assert day["peak_connections"] == pytest.approx(max(day_truth))
    day_naive = series[lo - 7 * SLOTS_PER_DAY : lo - 6 * SLOTS_PER_DAY]
    assert day["mape_pct"]["seasonal_naive"] == pytest.approx(
        _mape_and_bias(day_naive, day_truth, floor)[0]
    )
    assert set(day["under_capacity_minutes"]) == set(result["policies"])
    for name, minutes in day["under_capacity_minutes"].items():
        assert 0 <= minutes <= result["policies"][name]["under_capacity_minutes"], name

    # and the table and progress were written
    assert "demand_model" in out.getvalue() and "day 14/14" in err.getvalue()
