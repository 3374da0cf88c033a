"""The demand model: expected connections and deliveries/s per 15-minute slot, from the
wedding calendar, corrected by what the metric history saw.

Generic autoscalers only see past load; we know which weddings are booked, when their
ceremonies start and how many vendors each has. The calendar part is

    expected(slot) = baseline + Σ over weddings  vendors × devices_per_vendor × profile(h)

where ``h`` is the slot's hours from that wedding's ceremony and ``profile`` the shape
below; deliveries/s are connections × ``deliveries_per_connection``. Seasonality (busy
Saturdays in October, quiet February) falls out of the calendar. Everything else (a
mobile app release, a viral wedding, office-hours planning) is left to the correction:
a ratio observed/expected per UTC hour-of-week, shrunk toward 1 when thin.

Pure functions over plain dataclasses; ``scaling.selectors.demand_inputs`` builds them
from the database. Used by ``scaling.decisions`` (see docs/scaling.md).
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

UTC = dt.UTC
SLOT = dt.timedelta(minutes=15)
HORIZON = dt.timedelta(hours=48)

# The load profile: (hours from the ceremony, share of the wedding's devices connected).
# Vendors connect from mid-morning (hair & make-up, venue dressing, florist) and are all
# on by the ceremony; the photos and the reception keep most of them, the speeches and
# first dance are a second peak, and the last of them (DJ, venue, transport) leave
# around ten hours after. Linear between the points, 0 outside them.
LOAD_PROFILE: tuple[tuple[float, float], ...] = (
    (-6.0, 0.0),
    (-4.0, 0.3),
    (-2.0, 0.6),
    (-0.5, 1.0),  # everyone is on well before the vows
    (1.0, 1.0),
    (3.0, 0.7),  # photos, drinks
    (5.0, 0.8),  # speeches, first dance
    (8.0, 0.3),
    (10.0, 0.0),
)
# While a wedding's timeline still runs past the profile's tail (a late party), at least
# this share of its devices stays on until the timeline's end.
TIMELINE_FLOOR = 0.2
# A wedding's influence on demand: the profile's span (used to find relevant weddings).
PROFILE_START = dt.timedelta(hours=LOAD_PROFILE[0][0])
PROFILE_END = dt.timedelta(hours=LOAD_PROFILE[-1][0])
# Without a timeline, a wedding's window is taken to end this long after the ceremony.
DEFAULT_WINDOW_AFTER = dt.timedelta(hours=10)

_HOURS = [h for h, _ in LOAD_PROFILE]
_SHARES = [s for _, s in LOAD_PROFILE]


@dataclass(frozen=True)
class DemandParams:
    """The model's tuning constants (defaults are estimates until the history says more)."""

    # A vendor brings a phone and often a tablet or laptop (the planner, the venue desk).
    devices_per_vendor: float = 1.5
    # Timeline shifts, messages, presence: about one delivery per device every 20 s at peak.
    deliveries_per_connection: float = 0.05
    # Couples and planners online with no wedding that day; also what lets the ratio learn
    # the hours without weddings (a ratio of anything to 0 says nothing).
    baseline_connections: float = 10.0
    # Shrinkage: a bucket needs this many 15-minute slots of history to count half.
    prior_slots: float = 8.0
    # A ratio is clamped to [1/max_ratio, max_ratio]: one strange week must not zero or
    # quadruple the forecast.
    max_ratio: float = 4.0


@dataclass(frozen=True)
class WeddingPlan:
    """One booked wedding as the model sees it: when, how many vendors, until when."""

    ceremony_utc: dt.datetime
    vendors: int
    window_end_utc: dt.datetime
    wedding_id: int | None = None


@dataclass(frozen=True)
class Observation:
    """One metric reading (a ``MetricSnapshot`` row): connections and deliveries/s."""

    at_utc: dt.datetime
    connections: float
    deliveries_per_s: float | None = None


@dataclass(frozen=True)
class SlotForecast:
    """The demand expected in the 15 minutes from ``start_utc``, corrected and not."""

    start_utc: dt.datetime
    connections: float
    deliveries_per_s: float
    uncorrected_connections: float
    uncorrected_deliveries_per_s: float


@dataclass(frozen=True)
class Correction:
    """Learned ratios observed/expected per UTC hour-of-week (0 = Monday 00:00 UTC);
    a missing hour is 1.0. ``slots`` counts the history behind each ratio."""

    connections: dict[int, float] = field(default_factory=dict)
    deliveries: dict[int, float] = field(default_factory=dict)
    slots: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Forecast:
    """The next 48 h of slots, and the weddings behind them (for the Saturday protocol)."""

    made_at: dt.datetime
    slots: tuple[SlotForecast, ...]
    weddings: tuple[WeddingPlan, ...] = ()


def load_profile(hours_from_ceremony: float) -> float:
    """Share of a wedding's devices connected ``hours_from_ceremony`` after its ceremony."""
    if hours_from_ceremony <= _HOURS[0] or hours_from_ceremony >= _HOURS[-1]:
        return 0.0
    i = bisect.bisect_right(_HOURS, hours_from_ceremony)
    h0, h1, s0, s1 = _HOURS[i - 1], _HOURS[i], _SHARES[i - 1], _SHARES[i]
    return s0 + (s1 - s0) * (hours_from_ceremony - h0) / (h1 - h0)


def hour_of_week(at: dt.datetime) -> int:
    """0..167: the UTC hour of the week, Monday 00:00 UTC being 0."""
    at = at.astimezone(UTC)
    return at.weekday() * 24 + at.hour


def slot_floor(at: dt.datetime) -> dt.datetime:
    """The start (UTC) of the 15-minute slot holding ``at``."""
    at = at.astimezone(UTC)
    return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)


def slot_starts(now: dt.datetime, horizon: dt.timedelta = HORIZON) -> list[dt.datetime]:
    """The slots of the next ``horizon``, starting with the one holding ``now``."""
    first = slot_floor(now)
    return [first + i * SLOT for i in range(math.ceil(horizon / SLOT))]


def wedding_connections(plan: WeddingPlan, at: dt.datetime, params: DemandParams) -> float:
    """Devices of one wedding connected at ``at``: its vendors × devices × the profile."""
    hours = (at - plan.ceremony_utc).total_seconds() / 3600
    share = load_profile(hours)
    if hours > 0 and at < plan.window_end_utc:
        share = max(share, TIMELINE_FLOOR)
    return plan.vendors * params.devices_per_vendor * share


def expected_connections(
    plans: Iterable[WeddingPlan], at: dt.datetime, params: DemandParams
) -> float:
    """The calendar's connections at ``at`` (mid-slot is the usual ``at``), uncorrected."""
    return params.baseline_connections + sum(wedding_connections(p, at, params) for p in plans)


def _mid(start: dt.datetime) -> dt.datetime:
    return start + SLOT / 2


def relevant(
    plans: Sequence[WeddingPlan], start: dt.datetime, end: dt.datetime
) -> list[WeddingPlan]:
    """The plans whose profile or window overlaps [start, end)."""
    return [
        p
        for p in plans
        if p.ceremony_utc + PROFILE_START < end
        and max(p.ceremony_utc + PROFILE_END, p.window_end_utc) > start
    ]


def learn_correction(
    plans: Sequence[WeddingPlan],
    observations: Iterable[Observation],
    params: DemandParams | None = None,
) -> Correction:
    """Ratios observed/expected per hour-of-week from the history, shrunk toward 1.

    Readings are averaged per 15-minute slot first (a snapshot a minute, or fewer), so a
    bucket's weight is its number of slots n: ratio = w·(Σobserved/Σexpected) + (1 − w)
    with w = n / (n + prior_slots), then clamped to [1/max_ratio, max_ratio].
    """
    params = params or DemandParams()
    by_slot: dict[dt.datetime, list[Observation]] = defaultdict(list)
    for obs in observations:
        by_slot[slot_floor(obs.at_utc)].append(obs)
    if not by_slot:
        return Correction()
    plans = relevant(plans, min(by_slot), max(by_slot) + SLOT)
    sums: dict[int, list[float]] = defaultdict(empty_sums)
    for start, readings in by_slot.items():
        observed = sum(r.connections for r in readings) / len(readings)
        deliveries = [r.deliveries_per_s for r in readings if r.deliveries_per_s is not None]
        add_to_sums(
            sums[hour_of_week(start)],
            observed,
            expected_connections(plans, _mid(start), params),
            sum(deliveries) / len(deliveries) if deliveries else None,
            params,
        )
    return correction_from_sums(sums, params)


def empty_sums() -> list[float]:
    """An hour-of-week's sums behind its ratios, with no slot yet: [Σobserved connections,
    Σexpected connections, Σobserved deliveries/s, Σexpected deliveries/s, slots]. Public
    so that a rolling window (the scaling backtest) gets the same ratios."""
    return [0.0, 0.0, 0.0, 0.0, 0]


def add_to_sums(
    sums: list[float],
    observed: float,
    expected: float,
    deliveries: float | None,
    params: DemandParams,
    sign: int = 1,
) -> None:
    """Add (``sign`` 1) or remove (-1) one slot: its mean connections and deliveries/s
    (None: not measured) against the calendar's expected connections."""
    sums[0] += sign * observed
    sums[1] += sign * expected
    if deliveries is not None:
        sums[2] += sign * deliveries
        sums[3] += sign * expected * params.deliveries_per_connection
    sums[4] += sign


def shrunk(observed: float, expected: float, n: float, params: DemandParams) -> float:
    """Σobserved/Σexpected over ``n`` slots, shrunk toward 1 by w = n / (n + prior_slots)
    and clamped to [1/max_ratio, max_ratio]; 1.0 when nothing was expected."""
    if expected <= 0:
        return 1.0
    weight = n / (n + params.prior_slots)
    ratio = weight * (observed / expected) + (1 - weight)
    return min(params.max_ratio, max(1 / params.max_ratio, ratio))


def correction_from_sums(sums: Mapping[int, Sequence[float]], params: DemandParams) -> Correction:
    """The ratios of each hour-of-week's sums; an hour with no slot is left out (1.0)."""
    connections, deliveries, slots = {}, {}, {}
    for how, (obs_c, exp_c, obs_d, exp_d, n) in sums.items():
        if n <= 0:
            continue
        connections[how] = shrunk(obs_c, exp_c, n, params)
        deliveries[how] = shrunk(obs_d, exp_d, n, params)
        slots[how] = int(n)
    return Correction(connections=connections, deliveries=deliveries, slots=slots)


def slot_forecast(
    start: dt.datetime, connections: float, correction: Correction, params: DemandParams
) -> SlotForecast:
    """The slot from ``start`` whose calendar expects ``connections``, with the ratios of
    its hour-of-week applied (deliveries/s follow the connections)."""
    deliveries = connections * params.deliveries_per_connection
    how = hour_of_week(start)
    return SlotForecast(
        start_utc=start,
        connections=connections * correction.connections.get(how, 1.0),
        deliveries_per_s=deliveries * correction.deliveries.get(how, 1.0),
        uncorrected_connections=connections,
        uncorrected_deliveries_per_s=deliveries,
    )


def forecast(
    plans: Sequence[WeddingPlan],
    now: dt.datetime,
    correction: Correction | None = None,
    params: DemandParams | None = None,
    horizon: dt.timedelta = HORIZON,
) -> Forecast:
    """The demand of each 15-minute slot of the next ``horizon`` (48 h by default)."""
    params = params or DemandParams()
    correction = correction or Correction()
    starts = slot_starts(now, horizon)
    plans = relevant(plans, starts[0], starts[-1] + SLOT)
    slots = [
        slot_forecast(start, expected_connections(plans, _mid(start), params), correction, params)
        for start in starts
    ]
    return Forecast(made_at=now, slots=tuple(slots), weddings=tuple(plans))
