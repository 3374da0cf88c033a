"""The scaling backtest: a synthetic wedding calendar and its load, replayed day by day
through the demand model and ``decide()``, against seasonal-naive and reactive-only.

Called by ``python manage.py scaling_backtest`` (docs/benchmarks.md has the figures).
Pure: no database, no clock; everything comes from a seeded ``random.Random``. Plain
Python lists (numpy is not a dependency); the model's parts are the real ones
(``wedding_connections``, the shrinkage of ``learn_correction``, ``decide``).
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from scaling.decisions import (
    Capacity,
    CurrentMetrics,
    ScalingPolicy,
    decide,
    weddings_in_window,
)
from scaling.demand import (
    LOAD_PROFILE,
    SLOT,
    Correction,
    DemandParams,
    Forecast,
    SlotForecast,
    WeddingPlan,
    hour_of_week,
    relevant,
    wedding_connections,
)

UTC = dt.UTC
SLOTS_PER_DAY = 96
WEEK_SLOTS = 7 * SLOTS_PER_DAY

# Share of a year's weddings per month (UK/US industry surveys: September-October peak,
# January-February trough). October 20 %, February 3 %; sums to 1.
MONTH_SHARE = (0.025, 0.03, 0.04, 0.06, 0.09, 0.13, 0.11, 0.11, 0.14, 0.20, 0.035, 0.03)
# Share per weekday, Monday first: Saturday 60 %, then Friday and Sunday.
WEEKDAY_SHARE = (0.02, 0.02, 0.02, 0.05, 0.17, 0.60, 0.12)
# Where the weddings are, and how many of them (a few European and US zones).
TIME_ZONES = (
    ("Europe/London", 0.35),
    ("Europe/Paris", 0.20),
    ("Europe/Berlin", 0.10),
    ("America/New_York", 0.20),
    ("America/Chicago", 0.10),
    ("America/Los_Angeles", 0.05),
)
# Local ceremony hour: mostly 11:00-17:00, a few morning or evening ones.
CEREMONY_HOURS = (
    (10, 0.04),
    (11, 0.10),
    (12, 0.15),
    (13, 0.17),
    (14, 0.18),
    (15, 0.15),
    (16, 0.11),
    (17, 0.06),
    (18, 0.04),
)
# Truth differs from the model's defaults, so the correction has something to learn:
# vendors bring 2.1 devices on average (model: 1.5), and ceremonies start a little late.
TRUE_DEVICES_MEAN = 2.1
TRUE_DEVICES_SD = 0.35
LATE_START_MAX_H = 0.5
# Noise: a day-level factor (weather, news) and a slot-level one, both multiplicative.
DAY_NOISE_SD = 0.04
SLOT_NOISE_SD = 0.07
VIRAL_FACTOR = 3.0
VIRAL_FROM_HOUR = 12
STORM_ZONE = "America/New_York"


@dataclass(frozen=True)
class SyntheticWedding:
    """One wedding of the synthetic calendar: as booked, and as it really happened."""

    booked_ceremony_utc: dt.datetime
    ceremony_utc: dt.datetime  # what happened: late start, or moved by the storm
    vendors: int
    devices_per_vendor: float
    time_zone: str
    window_hours: float

    def plan(self, wedding_id: int | None = None) -> WeddingPlan:
        """What the demand model sees: the booking, not what happened."""
        return WeddingPlan(
            ceremony_utc=self.booked_ceremony_utc,
            vendors=self.vendors,
            window_end_utc=self.booked_ceremony_utc + dt.timedelta(hours=self.window_hours),
            wedding_id=wedding_id,
        )


def _pick(rng: random.Random, weighted: Sequence[tuple[object, float]]):
    return rng.choices([v for v, _ in weighted], weights=[w for _, w in weighted])[0]


def wedding_calendar(year: int, count: int, rng: random.Random) -> list[SyntheticWedding]:
    """``count`` weddings in ``year``: month and weekday drawn from the shares above."""
    weddings = []
    months = list(range(1, 13))
    weekdays = list(range(7))
    for _ in range(count):
        month = rng.choices(months, weights=MONTH_SHARE)[0]
        weekday = rng.choices(weekdays, weights=WEEKDAY_SHARE)[0]
        days = [
            d
            for d in range(1, calendar.monthrange(year, month)[1] + 1)
            if dt.date(year, month, d).weekday() == weekday
        ]
        day = dt.date(year, month, rng.choice(days))
        zone = _pick(rng, TIME_ZONES)
        hour = _pick(rng, CEREMONY_HOURS)
        local = dt.datetime(
            year, month, day.day, hour, rng.choice((0, 0, 30)), tzinfo=ZoneInfo(zone)
        )
        booked = local.astimezone(UTC)
        late = dt.timedelta(hours=rng.uniform(0, LATE_START_MAX_H))
        weddings.append(
            SyntheticWedding(
                booked_ceremony_utc=booked,
                ceremony_utc=booked + late,
                vendors=max(4, round(rng.gauss(14, 4))),
                devices_per_vendor=max(1.0, rng.gauss(TRUE_DEVICES_MEAN, TRUE_DEVICES_SD)),
                time_zone=zone,
                window_hours=rng.uniform(8, 12),
            )
        )
    return weddings


def calendar_shares(weddings: Sequence[SyntheticWedding]) -> dict[str, float]:
    """Share of Saturdays, of October and of February among the weddings (local dates)."""
    local = [w.booked_ceremony_utc.astimezone(ZoneInfo(w.time_zone)) for w in weddings]
    n = len(local) or 1
    return {
        "saturday": sum(d.weekday() == 5 for d in local) / n,
        "october": sum(d.month == 10 for d in local) / n,
        "february": sum(d.month == 2 for d in local) / n,
    }


@dataclass
class History:
    """The synthetic history: slot by slot truth, and the calendar as booked."""

    start: dt.datetime
    days: int
    plans: list[WeddingPlan]
    connections: list[float]
    deliveries: list[float]
    weddings: int
    events: list[dict] = field(default_factory=list)

    @property
    def slots(self) -> int:
        """How many 15-minute slots the history holds."""
        return len(self.connections)

    def at(self, t: int) -> dt.datetime:
        """The start (UTC) of slot ``t``."""
        return self.start + t * SLOT


def _baseline(at: dt.datetime) -> float:
    """Couples and planners with no wedding on: office hours and evenings, by season."""
    base = 20.0
    if at.weekday() < 5 and 8 <= at.hour < 17:
        base += 50.0  # planners at their desks (Europe, UTC)
    if 18 <= at.hour < 23:
        base += 25.0  # couples in the evening
    return base * (0.8 + 2 * MONTH_SHARE[at.month - 1])


def _add_wedding(
    series: list[float], start: dt.datetime, plan: WeddingPlan, params: DemandParams
) -> None:
    """Add one wedding's connections to each slot of ``series`` (mid-slot, as the model)."""
    first = plan.ceremony_utc + dt.timedelta(hours=LOAD_PROFILE[0][0])
    last = max(plan.ceremony_utc + dt.timedelta(hours=LOAD_PROFILE[-1][0]), plan.window_end_utc)
    lo = max(0, math.floor((first - start) / SLOT))
    hi = min(len(series), math.ceil((last - start) / SLOT) + 1)
    half = SLOT / 2
    for t in range(lo, hi):
        series[t] += wedding_connections(plan, start + t * SLOT + half, params)


def synthetic_history(
    start: dt.date, days: int, seed: int, weddings_per_year: int = 5000
) -> History:
    """``days`` days of 15-minute truth from ``start`` (UTC), with a viral day and a storm."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible history, not security)
    t0 = dt.datetime(start.year, start.month, start.day, tzinfo=UTC)
    end = t0 + dt.timedelta(days=days)
    weddings: list[SyntheticWedding] = []
    for year in range(start.year - 1, end.year + 1):
        weddings += wedding_calendar(year, weddings_per_year, rng)
    margin = dt.timedelta(days=1)
    weddings = [w for w in weddings if t0 - margin <= w.booked_ceremony_utc < end + margin]
    weddings.sort(key=lambda w: w.booked_ceremony_utc)
    n = days * SLOTS_PER_DAY
    events: list[dict] = []
    saturdays = [
        t0.date() + dt.timedelta(days=d)
        for d in range(days)
        if (t0 + dt.timedelta(days=d)).weekday() == 5
    ]
    # A storm on the last October Saturday: that zone's weddings happen a day later than
    # booked, and the calendar is not updated in time (the worst case for the model).
    storm = next((d for d in reversed(saturdays) if d.month == 10), None)
    if storm is not None:
        moved = 0
        for i, w in enumerate(weddings):
            local = w.booked_ceremony_utc.astimezone(ZoneInfo(w.time_zone)).date()
            if w.time_zone == STORM_ZONE and local == storm:
                weddings[i] = SyntheticWedding(
                    w.booked_ceremony_utc,
                    w.ceremony_utc + dt.timedelta(days=1),
                    w.vendors,
                    w.devices_per_vendor,
                    w.time_zone,
                    w.window_hours,
                )
                moved += 1
        events.append(
            {
                "event": "storm",
                "date": storm.isoformat(),
                "zone": STORM_ZONE,
                "weddings_moved": moved,
            }
        )
    # A viral wedding on the first June Saturday: from 12:00 UTC to the day's end demand
    # is three times normal, as a step (a post goes viral; nobody forecast it).
    viral = next((d for d in saturdays if d.month == 6), None)
    if viral is not None:
        events.append(
            {
                "event": "viral",
                "date": viral.isoformat(),
                "factor": VIRAL_FACTOR,
                "from_utc": f"{VIRAL_FROM_HOUR:02d}:00",
            }
        )
    conn = [0.0] * n
    for w in weddings:
        actual = WeddingPlan(
            w.ceremony_utc, w.vendors, w.ceremony_utc + dt.timedelta(hours=w.window_hours)
        )
        _add_wedding(conn, t0, actual, DemandParams(devices_per_vendor=w.devices_per_vendor))
    deliveries = [0.0] * n
    viral_day = (viral - t0.date()).days if viral else -1
    for d in range(days):
        day_factor = math.exp(rng.gauss(0, DAY_NOISE_SD))
        for t in range(d * SLOTS_PER_DAY, (d + 1) * SLOTS_PER_DAY):
            at = t0 + t * SLOT
            factor = day_factor * math.exp(rng.gauss(0, SLOT_NOISE_SD))
            if d == viral_day and at.hour >= VIRAL_FROM_HOUR:
                factor *= VIRAL_FACTOR
            value = (conn[t] + _baseline(at)) * factor
            conn[t] = value
            deliveries[t] = value * 0.05 * math.exp(rng.gauss(0, 0.1))
    plans = [w.plan(i) for i, w in enumerate(weddings)]
    in_range = sum(t0 <= w.booked_ceremony_utc < end for w in weddings)
    return History(t0, days, plans, conn, deliveries, in_range, events)


def model_expected(history: History, params: DemandParams) -> list[float]:
    """The calendar's uncorrected connections per slot (``expected_connections`` at mid-slot)."""
    series = [params.baseline_connections] * history.slots
    for plan in history.plans:
        _add_wedding(series, history.start, plan, params)
    return series


class RollingCorrection:
    """``learn_correction`` over a sliding window of days, kept up to date incrementally.

    Same ratio as ``scaling.demand.learn_correction`` (one observation per slot): per UTC
    hour-of-week Σobserved/Σexpected, shrunk toward 1 by n/(n + prior_slots) and clamped.
    """

    def __init__(self, params: DemandParams) -> None:
        self.params = params
        self.sums: dict[int, list[float]] = {}

    def update(
        self, how: int, observed: float, expected: float, obs_d: float, sign: int = 1
    ) -> None:
        """Add (sign 1) or remove (sign -1) one slot's observation."""
        acc = self.sums.setdefault(how, [0.0, 0.0, 0.0, 0.0, 0])
        acc[0] += sign * observed
        acc[1] += sign * expected
        acc[2] += sign * obs_d
        acc[3] += sign * expected * self.params.deliveries_per_connection
        acc[4] += sign

    def correction(self) -> Correction:
        """The ratios as ``learn_correction`` would return them for the window."""
        p = self.params

        def shrunk(observed: float, expected: float, n: int) -> float:
            if expected <= 0:
                return 1.0
            weight = n / (n + p.prior_slots)
            ratio = weight * (observed / expected) + (1 - weight)
            return min(p.max_ratio, max(1 / p.max_ratio, ratio))

        conn, deli, slots = {}, {}, {}
        for how, (oc, ec, od, ed, n) in self.sums.items():
            if n <= 0:
                continue
            conn[how] = shrunk(oc, ec, n)
            deli[how] = shrunk(od, ed, n) if ed > 0 else 1.0
            slots[how] = int(n)
        return Correction(connections=conn, deliveries=deli, slots=slots)


def mape(forecasts: Sequence[float], truth: Sequence[float], min_truth: float) -> float | None:
    """Mean absolute percentage error over the slots whose truth exceeds ``min_truth``."""
    errors = [abs(f - y) / y for f, y in zip(forecasts, truth, strict=True) if y > min_truth]
    return 100 * sum(errors) / len(errors) if errors else None


def capacity_cost(
    processes: Sequence[int],
    truth: Sequence[float],
    per_process: float,
    slot_minutes: float = 15.0,
) -> tuple[float, float]:
    """(minutes with demand above capacity, process-hours) of a capacity series."""
    under = sum(slot_minutes for p, y in zip(processes, truth, strict=True) if y > p * per_process)
    return under, sum(processes) * slot_minutes / 60


@dataclass
class _Fleet:
    """One capacity policy replayed: its state and its per-slot capacity."""

    capacity: Capacity
    processes: list[int] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)
    changes: int = 0

    def step(
        self, forecast: Forecast, current: CurrentMetrics, policy: ScalingPolicy, now: dt.datetime
    ) -> None:
        decision = decide(forecast, current, self.capacity, policy, now)
        cap = self.capacity
        changed = (
            decision.asgi_processes != cap.asgi_processes
            or decision.celery_workers != cap.celery_workers
        )
        if changed:
            self.changes += 1
        self.capacity = Capacity(
            decision.asgi_processes,
            decision.celery_workers,
            decision.connection_limit,
            now if changed else cap.last_change_at,
        )
        self.processes.append(decision.asgi_processes)
        self.workers.append(decision.celery_workers)
        self.limits.append(decision.connection_limit)


def replay(
    history: History,
    *,
    history_days: int = 56,
    warmup_days: int = 7,
    min_truth: float = 100.0,
    params: DemandParams | None = None,
    policy: ScalingPolicy | None = None,
    progress: Callable[[int, int], None] | None = None,
    without_protocol: bool = False,
) -> dict:
    """Replay ``history`` day by day; the forecast errors and each policy's cost, as JSON."""
    params = params or DemandParams()
    policy = policy or ScalingPolicy()
    n, truth, deli = history.slots, history.connections, history.deliveries
    expected = model_expected(history, params)
    how = [hour_of_week(history.at(t)) for t in range(n)]
    rolling = RollingCorrection(params)
    model_fc = [0.0] * n
    lookahead = math.ceil(policy.prescale_lead / SLOT) + 1
    fleets = {
        "demand_model": _Fleet(
            Capacity(
                policy.min_asgi,
                policy.min_workers,
                policy.min_asgi * policy.connection_limit_per_process,
            )
        ),
        "reactive_only": _Fleet(
            Capacity(
                policy.min_asgi,
                policy.min_workers,
                policy.min_asgi * policy.connection_limit_per_process,
            )
        ),
    }
    if without_protocol:
        # The same forecast without the Saturday protocol (no weddings passed to decide):
        # separates what the forecast costs from what "no scale-in in a window" costs.
        fleets["demand_model_no_protocol"] = _Fleet(
            Capacity(
                policy.min_asgi,
                policy.min_workers,
                policy.min_asgi * policy.connection_limit_per_process,
            )
        )
    in_window_slots = 0
    lo = min(n, max(warmup_days * SLOTS_PER_DAY, WEEK_SLOTS))  # scored from here
    plans = sorted(history.plans, key=lambda p: p.ceremony_utc)
    for d in range(history.days):
        first = d * SLOTS_PER_DAY
        # Learn from the last history_days days (made at midnight UTC, before day d).
        if d > 0:
            for t in range(first - SLOTS_PER_DAY, first):
                rolling.update(how[t], truth[t], expected[t], deli[t])
        old = d - 1 - history_days
        if old >= 0:
            for t in range(old * SLOTS_PER_DAY, (old + 1) * SLOTS_PER_DAY):
                rolling.update(how[t], truth[t], expected[t], deli[t], sign=-1)
        corr = rolling.correction()
        day_start = history.at(first)
        end = min(n, first + SLOTS_PER_DAY + lookahead)
        slots = []
        for t in range(first, end):
            c = expected[t] * corr.connections.get(how[t], 1.0)
            e = expected[t] * params.deliveries_per_connection
            slots.append(
                SlotForecast(history.at(t), c, e * corr.deliveries.get(how[t], 1.0), expected[t], e)
            )
            if t < first + SLOTS_PER_DAY:
                model_fc[t] = c
        day_plans = tuple(
            relevant(plans, day_start - dt.timedelta(hours=12), day_start + dt.timedelta(hours=30))
        )
        empty = Forecast(made_at=day_start, slots=())
        for i in range(SLOTS_PER_DAY):
            t = first + i
            now = history.at(t)
            # What the evaluation sees at the slot's start: the last slot's reading.
            current = CurrentMetrics(
                connections=round(truth[t - 1]) if t else 0,
                deliveries_per_s=deli[t - 1] if t else 0.0,
            )
            fc = Forecast(
                made_at=day_start, slots=tuple(slots[i : i + lookahead]), weddings=day_plans
            )
            fleets["demand_model"].step(fc, current, policy, now)
            if without_protocol:
                bare = Forecast(made_at=day_start, slots=fc.slots)
                fleets["demand_model_no_protocol"].step(bare, current, policy, now)
            if t >= lo and weddings_in_window(day_plans, now, policy.window_lead):
                in_window_slots += 1
            fleets["reactive_only"].step(empty, current, policy, now)
        if progress:
            progress(d + 1, history.days)
    result = _report(history, expected, model_fc, fleets, warmup_days, min_truth, policy)
    result["share_of_time_scale_in_blocked_pct"] = (
        100 * in_window_slots / (n - lo) if n > lo else None
    )
    return result


def _report(history, expected, model_fc, fleets, warmup_days, min_truth, policy) -> dict:
    """The figures over the days after the warm-up."""
    lo = min(history.slots, max(warmup_days * SLOTS_PER_DAY, WEEK_SLOTS))
    truth = history.connections[lo:]
    naive = history.connections[lo - WEEK_SLOTS : len(history.connections) - WEEK_SLOTS]
    last = history.connections[lo - 1 : -1]  # reactive: the slot before, 15 min ahead
    scored = sum(y > min_truth for y in truth)

    def bias(fc: Sequence[float]) -> float | None:
        pairs = [(f, y) for f, y in zip(fc, truth, strict=True) if y > min_truth]
        return 100 * sum((f - y) / y for f, y in pairs) / len(pairs) if pairs else None

    forecasts = {
        "demand_model": model_fc[lo:],
        "demand_model_uncorrected": expected[lo:],
        "seasonal_naive": naive,
        "reactive_last_value": last,
    }
    errors = {
        name: {"mape_pct": mape(fc, truth, min_truth), "bias_pct": bias(fc)}
        for name, fc in forecasts.items()
    }
    policies = {}
    for name, fleet in fleets.items():
        under, hours = capacity_cost(fleet.processes[lo:], truth, policy.connections_per_process)
        over_limit = sum(15 for lim, y in zip(fleet.limits[lo:], truth, strict=True) if y > lim)
        worker_short = sum(
            15
            for w, y in zip(fleet.workers[lo:], history.deliveries[lo:], strict=True)
            if y > w * policy.deliveries_per_worker
        )
        policies[name] = {
            "under_capacity_minutes": under,
            "over_connection_limit_minutes": over_limit,
            "worker_short_minutes": worker_short,
            "process_hours": hours,
            "worker_hours": sum(fleet.workers[lo:]) * 15 / 60,
            "peak_processes": max(fleet.processes[lo:], default=0),
            "changes": fleet.changes,
        }
    event_days = []
    for event in history.events:
        day = (dt.date.fromisoformat(event["date"]) - history.start.date()).days
        for d in (day, day + 1):  # the day and the next (the storm moves weddings to it)
            a, b = d * SLOTS_PER_DAY, (d + 1) * SLOTS_PER_DAY
            if a < lo or b > history.slots:
                continue
            y = history.connections[a:b]
            event_days.append(
                {
                    "event": event["event"],
                    "date": history.at(a).date().isoformat(),
                    "peak_connections": max(y),
                    "mape_pct": {
                        "demand_model": mape(model_fc[a:b], y, min_truth),
                        "seasonal_naive": mape(
                            history.connections[a - WEEK_SLOTS : b - WEEK_SLOTS], y, min_truth
                        ),
                    },
                    "under_capacity_minutes": {
                        name: capacity_cost(
                            fleet.processes[a:b], y, policy.connections_per_process
                        )[0]
                        for name, fleet in fleets.items()
                    },
                }
            )
    model, naive_mape = errors["demand_model"]["mape_pct"], errors["seasonal_naive"]["mape_pct"]
    return {
        "start": history.start.date().isoformat(),
        "days": history.days,
        "scored_from": history.at(lo).date().isoformat() if lo < history.slots else None,
        "weddings": history.weddings,
        "events": history.events,
        "slots_scored": scored,
        "min_truth": min_truth,
        "peak_connections": max(truth, default=0.0),
        "forecasts": errors,
        "policies": policies,
        "event_days": event_days,
        "model_vs_naive_mape_reduction_pct": (
            100 * (1 - model / naive_mape) if model is not None and naive_mape else None
        ),
    }
