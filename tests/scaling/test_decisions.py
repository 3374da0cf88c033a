"""Scaling decisions: forecast, reactive rules, hysteresis, cooldown, Saturday protocol."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from scaling.decisions import Capacity, CurrentMetrics, ScalingPolicy, decide
from scaling.demand import SLOT, Forecast, SlotForecast, WeddingPlan, forecast

UTC = dt.UTC
NOW = dt.datetime(2026, 6, 13, 10, 0, tzinfo=UTC)  # a Saturday morning
POLICY = ScalingPolicy()
LONG_AGO = NOW - dt.timedelta(days=1)


def _forecast(
    *, base: float = 0.0, peaks: dict[dt.timedelta, float] | None = None, weddings=()
) -> Forecast:
    """48 h of flat ``base`` connections, with ``peaks`` {time from NOW: connections}."""
    peaks = peaks or {}
    slots = []
    for i in range(48 * 4):
        start = NOW + i * SLOT
        connections = peaks.get(start - NOW, base)
        slots.append(SlotForecast(start, connections, connections / 20, connections, 0.0))
    return Forecast(made_at=NOW, slots=tuple(slots), weddings=tuple(weddings))


def _capacity(asgi: int = 4, workers: int = 2, last_change_at=LONG_AGO) -> Capacity:
    return Capacity(asgi, workers, asgi * POLICY.connection_limit_per_process, last_change_at)


def _wedding(ceremony_in: dt.timedelta, window_hours: float = 10) -> WeddingPlan:
    ceremony = NOW + ceremony_in
    return WeddingPlan(ceremony, 14, ceremony + dt.timedelta(hours=window_hours), wedding_id=7)


def _quiet(connections: int = 100) -> CurrentMetrics:
    return CurrentMetrics(connections, 5.0, latency_p95_s=0.05, cpu=0.2, error_rate=0.0)


# --- forecast and pre-scaling -------------------------------------------------------


def test_decide__scales_out_at_once_to_the_forecast_with_30_percent_headroom():
    # 5000 connections × 1.3 / 1000 per process = 6.5 → 7 processes, not one at a time
    decision = decide(_forecast(base=5000), _quiet(), _capacity(asgi=2), POLICY, NOW)

    assert decision.action == "scale_out"
    assert decision.asgi_processes == 7
    assert decision.celery_workers == 2  # 250 deliveries/s × 1.3 / 200 = 1.6 → 2
    assert decision.connection_limit == 7 * 1500
    assert "forecast peak of 5000 connections" in decision.reason
    assert "ASGI processes: 2 → 7" in decision.reason


@pytest.mark.parametrize(
    ("peak_in", "processes"),
    [
        (dt.timedelta(minutes=15), 12),  # 9000 × 1.3 / 1000 = 11.7: with the headroom
        (dt.timedelta(minutes=45), 9),  # its comfortable capacity: 9000 / 1000
        (dt.timedelta(hours=1), 9),
        (dt.timedelta(hours=1, minutes=30), 4),  # beyond the hour: nothing yet
    ],
)
def test_decide__pre_scales_for_a_peak_within_the_hour_and_adds_headroom_a_slot_before(
    peak_in, processes
):
    fc = _forecast(base=100, peaks={peak_in: 9000})

    decision = decide(fc, _quiet(), _capacity(asgi=4), POLICY, NOW)

    assert decision.asgi_processes == processes


def test_decide__a_peak_beyond_the_headroom_lead_is_provisioned_at_comfortable_capacity():
    # given: 9,000 connections and 450 deliveries/s forecast in 45 min, a quiet fleet
    fc = _forecast(base=100, peaks={dt.timedelta(minutes=45): 9000})

    # when
    decision = decide(fc, _quiet(), _capacity(asgi=2, workers=1), POLICY, NOW)

    # then: what the peak needs without headroom (9 processes, 450 / 200 → 3 workers); the
    # 30 % comes 15 min before it (12 processes, 450 × 1.3 / 200 → 3 workers)
    assert decision.action == "scale_out"
    assert (decision.asgi_processes, decision.celery_workers) == (9, 3)
    assert (
        "forecast peak of 9000 connections at Sat 10:45 UTC (within 1 h) needs 9 process(es) "
        "at comfortable capacity, 30% headroom from 15 min before it"
    ) in decision.reason


def test_decide__the_headroom_lead_is_a_policy_value_and_never_beyond_the_prescale_lead():
    fc = _forecast(base=100, peaks={dt.timedelta(minutes=45): 9000})

    hour = decide(
        fc, _quiet(), _capacity(), ScalingPolicy(headroom_lead=dt.timedelta(hours=1)), NOW
    )
    longer = decide(
        fc, _quiet(), _capacity(), ScalingPolicy(headroom_lead=dt.timedelta(hours=3)), NOW
    )
    short = ScalingPolicy(
        prescale_lead=dt.timedelta(minutes=30), headroom_lead=dt.timedelta(hours=3)
    )
    beyond = decide(fc, _quiet(), _capacity(), short, NOW)

    # then: an hour's headroom lead gives the peak its headroom now (12); a 3 h one acts as
    # the 1 h prescale lead; a peak beyond a 30 min prescale lead gets nothing yet
    assert hour.asgi_processes == 12
    assert "(within 1 h) needs 12 process(es) with 30% headroom" in hour.reason
    assert longer.asgi_processes == 12
    assert "(within 1 h) needs 12 process(es) with 30% headroom" in longer.reason
    assert beyond.asgi_processes == 4


def test_decide__keeps_what_a_peak_within_two_hours_needs_instead_of_scaling_in():
    # given: an oversized fleet of 14, a peak of 8,800 (12 processes) in 1 h 30
    fc = _forecast(base=100, peaks={dt.timedelta(hours=1, minutes=30): 8800})

    # when
    decision = decide(fc, _quiet(), _capacity(asgi=14, workers=5), POLICY, NOW)

    # then: down to the peak's 12 (not to the 1 process 100 connections need), so no
    # process released now is started again within the hour
    assert decision.action == "scale_in"
    assert decision.asgi_processes == 12


def test_decide__flags_a_24_hour_notice_for_a_peak_beyond_current_capacity():
    # given: a peak tomorrow morning, 23 h away, and one 25 h away that is larger
    fc = _forecast(base=100, peaks={dt.timedelta(hours=23): 9000, dt.timedelta(hours=25): 20_000})

    # when
    decision = decide(fc, _quiet(), _capacity(asgi=4), POLICY, NOW)
    no_need = decide(fc, _quiet(), _capacity(asgi=12), POLICY, NOW)

    # then: the notice names the peak within 24 h; nothing scales out yet
    assert decision.asgi_processes <= 4
    assert decision.notice is not None
    assert decision.notice.peak_at == NOW + dt.timedelta(hours=23)
    assert decision.notice.asgi_processes == 12
    assert "notice: 9000 connections expected at Sun 14 Jun 09:00 UTC" in decision.reason
    assert no_need.notice is None


# --- reactive rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "words"),
    [
        (CurrentMetrics(3300), "connections 3300 are 82% of capacity 4000"),
        (CurrentMetrics(100, latency_p95_s=0.8), "p95 latency 800 ms over 500 ms"),
        (CurrentMetrics(100, cpu=0.9), "CPU 90% over 75%"),
        (CurrentMetrics(100, error_rate=0.05), "error rate 5.0% over 2.0%"),
    ],
)
def test_decide__a_breached_reactive_limit_adds_half_the_fleet_whatever_the_forecast(
    current, words
):
    decision = decide(_forecast(base=100), current, _capacity(asgi=4, workers=2), POLICY, NOW)

    assert decision.action == "scale_out"
    assert decision.asgi_processes == 6
    assert decision.celery_workers == 3
    assert words in decision.reason


def test_decide__current_load_above_the_forecast_wins():
    decision = decide(_forecast(base=100), _quiet(connections=6000), _capacity(8), POLICY, NOW)

    assert decision.asgi_processes == 8  # 6000 × 1.3 = 7800 → 8
    assert "6000 connections now need 8 process(es)" in decision.reason


# --- hysteresis and cooldown --------------------------------------------------------


REACTIVE = Forecast(made_at=NOW, slots=())  # no calendar: what reactive-only decides on


def test_decide__without_a_forecast_scales_in_one_step_at_a_time_after_the_cooldown():
    decision = decide(REACTIVE, _quiet(), _capacity(asgi=10, workers=5), POLICY, NOW)

    assert decision.action == "scale_in"
    assert (decision.asgi_processes, decision.celery_workers) == (9, 4)
    assert "ASGI processes: 10 → 9" in decision.reason


def test_decide__a_forecast_that_saw_the_next_two_hours_scales_in_at_once():
    # given: 2,900 connections now and for the next 2 h; 10 processes
    fc = _forecast(base=2900)

    # when
    decision = decide(fc, _quiet(2900), _capacity(asgi=10, workers=5), POLICY, NOW)
    blind = decide(REACTIVE, _quiet(2900), _capacity(asgi=10, workers=5), POLICY, NOW)

    # then: straight to 2900 × (1.3 + 0.05) → 4 (reactive-only would keep 5 with its
    # 20 % margin); reactive-only steps to 9
    assert decision.asgi_processes == 4
    assert blind.asgi_processes == 9


def test_decide__a_forecast_too_short_for_two_hours_scales_in_as_reactive_only():
    fc = _forecast(base=3000)
    short = Forecast(made_at=NOW, slots=fc.slots[:6])  # 1 h 30

    decision = decide(short, _quiet(3000), _capacity(asgi=10, workers=5), POLICY, NOW)

    assert decision.asgi_processes == 9


@pytest.mark.parametrize(
    ("forecast_", "since", "scales_in"),
    [
        (REACTIVE, dt.timedelta(minutes=20), False),  # 30 min without a forecast
        (REACTIVE, dt.timedelta(minutes=31), True),
        (_forecast(base=100), dt.timedelta(minutes=10), False),  # 15 min with one
        (_forecast(base=100), dt.timedelta(minutes=16), True),
    ],
)
def test_decide__no_scale_in_within_the_scale_in_cooldown(forecast_, since, scales_in):
    decision = decide(forecast_, _quiet(), _capacity(10, 5, NOW - since), POLICY, NOW)

    assert (decision.action == "scale_in") is scales_in
    if not scales_in:
        assert decision.asgi_processes == 10
        assert "ASGI processes: scale-in waits for the cooldown" in decision.reason


def test_decide__scale_out_only_waits_for_its_short_cooldown():
    # given
    fc = _forecast(base=5000)
    one_minute_ago = NOW - dt.timedelta(minutes=1)

    # when
    waiting = decide(fc, _quiet(), _capacity(2, 2, one_minute_ago), POLICY, NOW)
    later = decide(
        fc, _quiet(), _capacity(2, 2, one_minute_ago), POLICY, NOW + dt.timedelta(minutes=2)
    )

    # then
    assert waiting.action == "hold"
    assert "ASGI processes: scale-out to 7 waits for the cooldown" in waiting.reason
    assert later.asgi_processes == 7


def test_decide__holds_inside_the_hysteresis_band():
    # given: 3000 connections need 4 processes at 30 % headroom but 5 at 50 %, and no
    # forecast has seen what comes next
    # when
    decision = decide(REACTIVE, _quiet(connections=3000), _capacity(asgi=5), POLICY, NOW)

    # then: no flapping between 4 and 5
    assert decision.asgi_processes == 5
    assert "ASGI processes: 5 kept, the load is within the hysteresis band" in decision.reason


def test_decide__a_breached_limit_in_the_scale_out_cooldown_holds_never_scales_in():
    # given: an oversized fleet, little forecast load, but CPU hot within a long cooldown
    policy = ScalingPolicy(scale_out_cooldown=dt.timedelta(hours=1))
    recently = NOW - dt.timedelta(minutes=40)
    hot = CurrentMetrics(100, cpu=0.95)

    # when
    decision = decide(_forecast(base=100), hot, _capacity(10, 5, recently), policy, NOW)

    # then
    assert decision.action == "hold"
    assert decision.asgi_processes == 10
    assert "ASGI processes: scale-out to 15 waits for the cooldown" in decision.reason


# --- the Saturday protocol ----------------------------------------------------------


# A forecast with the evening peak of a wedding day 5 h ahead: 8,000 connections (11
# processes with 30 % headroom), beyond the 2 h any scale-in looks at.
EVENING = {dt.timedelta(hours=5): 8000}


@pytest.mark.parametrize(
    ("ceremony_in", "window_hours", "in_window"),
    [
        (dt.timedelta(hours=1, minutes=30), 10, True),  # within 2 h of the vows
        (dt.timedelta(hours=-4), 10, True),  # the reception's timeline still runs
        (dt.timedelta(hours=3), 10, False),  # not yet in its window
        (dt.timedelta(hours=-11), 10, False),  # its timeline ended an hour ago
    ],
)
def test_decide__a_wedding_in_its_window_keeps_what_its_window_will_need(
    ceremony_in, window_hours, in_window
):
    fc = _forecast(base=100, peaks=EVENING, weddings=[_wedding(ceremony_in, window_hours)])

    decision = decide(fc, _quiet(), _capacity(asgi=14, workers=5), POLICY, NOW)

    assert decision.action == "scale_in"
    if in_window:
        # down to the evening's 11, not to the 1 process the next 2 h need
        assert decision.asgi_processes == 11
        assert "ASGI processes: scale-in stops at 11, 1 wedding(s) in their window" in (
            decision.reason
        )
        assert decision.inputs["weddings_in_window"] == [7]
        assert decision.inputs["window_floor"]["asgi"] == 11
    else:
        assert decision.asgi_processes == 2  # the minimum
        assert decision.inputs["weddings_in_window"] == []


def test_decide__no_scale_in_when_the_window_needs_all_there_is():
    fc = _forecast(base=100, peaks=EVENING, weddings=[_wedding(dt.timedelta(hours=-1))])

    decision = decide(fc, _quiet(), _capacity(asgi=11, workers=5), POLICY, NOW)

    assert decision.asgi_processes == 11
    assert "ASGI processes: no scale-in, 1 wedding(s) in their window need it until" in (
        decision.reason
    )


def test_decide__the_window_floor_ends_with_the_last_window():
    # given: the evening peak comes after the only wedding's window has closed
    wedding = _wedding(dt.timedelta(hours=-6), window_hours=8)  # ends in 2 h
    fc = _forecast(base=100, peaks=EVENING, weddings=[wedding])

    decision = decide(fc, _quiet(), _capacity(asgi=14, workers=5), POLICY, NOW)

    # then: nobody in a window needs the evening's capacity; the next 2 h need the minimum
    assert decision.asgi_processes == 2
    assert decision.inputs["window_floor"]["asgi"] == 1


def test_decide__the_saturday_protocol_does_not_stop_a_scale_out():
    fc = _forecast(base=5000, weddings=[_wedding(dt.timedelta(hours=1))])

    decision = decide(fc, _quiet(), _capacity(asgi=2), POLICY, NOW)

    assert decision.asgi_processes == 7


# --- bounds -------------------------------------------------------------------------


def test_decide__never_above_the_maximum_and_says_so():
    decision = decide(_forecast(base=100_000), _quiet(), _capacity(asgi=10), POLICY, NOW)

    assert decision.asgi_processes == POLICY.max_asgi
    assert decision.celery_workers == POLICY.max_workers
    assert f"held at the maximum of {POLICY.max_asgi} (wanted 130)" in decision.reason
    assert decision.notice is not None and decision.notice.asgi_processes == POLICY.max_asgi


def test_decide__never_below_the_minimum_even_with_no_load():
    decision = decide(_forecast(), CurrentMetrics(0), _capacity(asgi=1, workers=0), POLICY, NOW)

    assert (decision.asgi_processes, decision.celery_workers) == (2, 1)
    assert decision.action == "scale_out"
    assert "held at the minimum of 2" in decision.reason


# --- inputs and the model end to end ------------------------------------------------


def test_decide__carries_its_inputs_as_json():
    fc = _forecast(base=100, peaks={dt.timedelta(hours=1): 4000})

    decision = decide(fc, _quiet(), _capacity(), POLICY, NOW)

    inputs = json.loads(json.dumps(decision.inputs))
    assert inputs["now"] == NOW.isoformat()
    assert inputs["forecast_peak"]["connections"] == 4000
    assert inputs["forecast_peak"]["start_utc"] == (NOW + dt.timedelta(hours=1)).isoformat()
    assert inputs["current"]["connections"] == 100
    assert inputs["capacity"]["asgi_processes"] == 4
    assert inputs["policy"]["headroom"] == 0.3
    assert inputs["policy"]["prescale_lead"] == 3600.0
    assert inputs["policy"]["headroom_lead"] == 900.0
    assert inputs["policy"]["scale_in_lead"] == 7200.0


def test_decide__on_the_demand_model_a_wedding_saturday_is_provisioned_before_the_vows():
    # given: 40 weddings of 14 vendors at 14:00 UTC, small processes, a quiet morning fleet
    policy = ScalingPolicy(connections_per_process=200, min_asgi=1)
    ceremony = NOW.replace(hour=14)
    plans = [WeddingPlan(ceremony, 14, ceremony + dt.timedelta(hours=10), i) for i in range(40)]
    capacity = _capacity(asgi=1, workers=1)

    # when: decisions 2 h 15 and 45 min before the vows
    early_at = ceremony - dt.timedelta(hours=2, minutes=15)
    due_at = ceremony - dt.timedelta(minutes=45)
    early = decide(forecast(plans, early_at), _quiet(10), capacity, policy, early_at)
    due = decide(forecast(plans, due_at), _quiet(10), capacity, policy, due_at)

    # then: 40 × 14 × 1.5 + 10 = 850 devices at the vows, × 1.3 / 200 → 6 processes,
    # reached 45 min before; 2 h 15 before only the morning ramp is in the lead
    assert due.inputs["forecast_peak"]["connections"] == pytest.approx(850)
    assert due.asgi_processes == 6
    assert early.asgi_processes < due.asgi_processes
    assert early.inputs["weddings_in_window"] == []
    assert due.inputs["weddings_in_window"] == list(range(40))
