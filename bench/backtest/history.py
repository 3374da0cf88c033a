"""The backtest's synthetic history: a wedding calendar drawn from industry shares, and
15-minute truth (connections, deliveries/s) from it, with noise, a viral day and a storm.

Each wedding's load follows a profile of its own (``wedding_profile``: the day's ramps
earlier or later, longer or shorter, a smaller or bigger evening peak) that the demand
model does not know, with the wedding's true devices per vendor; the truth then adds
what the model does not know either (planners and couples online, noise, the two
events). ``model_profile=True`` gives every wedding the model's own shape instead, as
the first backtest did. Pure: everything comes from seeded ``random.Random`` s.
"""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from zoneinfo import ZoneInfo

from scaling.demand import (
    LOAD_PROFILE,
    PROFILE_END,
    PROFILE_START,
    SLOT,
    TIMELINE_FLOOR,
    DemandParams,
    WeddingPlan,
    wedding_connections,
)

UTC = dt.UTC
SLOTS_PER_DAY = dt.timedelta(days=1) // SLOT
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
# A wedding's timeline runs this many hours after its ceremony.
MIN_WINDOW_HOURS, MAX_WINDOW_HOURS = 8.0, 12.0


# A wedding's own profile: the model's points moved by a shift (hours), stretched in time,
# and with shares of their own (the photos' dip, the evening peak, the tail) drawn from
# these ranges. The vows' plateau (share 1.0) is kept: every vendor is on for the vows.
PROFILE_SHIFT_H = (-0.75, 0.75)
PROFILE_STRETCH = (0.75, 1.35)
PROFILE_SHARES = {  # index of the point in LOAD_PROFILE: (low, high)
    1: (0.1, 0.5),  # the morning ramp (hair & make-up, venue dressing)
    2: (0.4, 0.8),
    5: (0.45, 0.85),  # photos, drinks
    6: (0.5, 1.0),  # speeches, first dance
    7: (0.15, 0.45),  # the party's tail
}


def wedding_profile(rng: random.Random) -> tuple[tuple[float, float], ...]:
    """One wedding's profile ((hours from the ceremony, share), ...), drawn around the
    model's ``LOAD_PROFILE``: what a real calendar's weddings look like to a model that
    knows one average shape."""
    shift = rng.uniform(*PROFILE_SHIFT_H)
    stretch = rng.uniform(*PROFILE_STRETCH)
    points = []
    for i, (hours, share) in enumerate(LOAD_PROFILE):
        if i in PROFILE_SHARES:
            share = rng.uniform(*PROFILE_SHARES[i])
        points.append((hours * stretch + shift, share))
    return tuple(points)


def profile_share(points: Sequence[tuple[float, float]], hours: float) -> float:
    """The share of ``points`` (linear between them, 0 outside) ``hours`` from the vows."""
    if hours <= points[0][0] or hours >= points[-1][0]:
        return 0.0
    for (h0, s0), (h1, s1) in itertools.pairwise(points):
        if h0 <= hours <= h1:
            return s0 + (s1 - s0) * (hours - h0) / (h1 - h0)
    return 0.0


@dataclass(frozen=True)
class SyntheticWedding:
    """One wedding of the synthetic calendar: as booked, and as it really happened."""

    booked_ceremony_utc: dt.datetime
    ceremony_utc: dt.datetime  # what happened: late start, or moved by the storm
    vendors: int
    devices_per_vendor: float
    time_zone: str
    window_hours: float
    profile: tuple[tuple[float, float], ...] | None = None  # None: the model's own

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
                window_hours=rng.uniform(MIN_WINDOW_HOURS, MAX_WINDOW_HOURS),
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


def add_wedding(
    series: list[float],
    start: dt.datetime,
    plan: WeddingPlan,
    params: DemandParams,
    profile: Sequence[tuple[float, float]] | None = None,
) -> None:
    """Add one wedding's connections at mid-slot to the slots of ``series`` from ``start``
    that its profile or window spans: ``wedding_connections`` (the model's shape, the span
    ``scaling.demand.relevant`` uses) or, given a ``profile``, that shape with the same
    timeline floor."""
    if profile is None:
        first = plan.ceremony_utc + PROFILE_START
        last = max(plan.ceremony_utc + PROFILE_END, plan.window_end_utc)
    else:
        first = plan.ceremony_utc + dt.timedelta(hours=profile[0][0])
        last = max(plan.ceremony_utc + dt.timedelta(hours=profile[-1][0]), plan.window_end_utc)
    lo = max(0, math.floor((first - start) / SLOT))
    hi = min(len(series), math.ceil((last - start) / SLOT) + 1)
    half = SLOT / 2
    devices = plan.vendors * params.devices_per_vendor
    for t in range(lo, hi):
        at = start + t * SLOT + half
        if profile is None:
            series[t] += wedding_connections(plan, at, params)
            continue
        hours = (at - plan.ceremony_utc).total_seconds() / 3600
        share = profile_share(profile, hours)
        if hours > 0 and at < plan.window_end_utc:
            share = max(share, TIMELINE_FLOOR)
        series[t] += devices * share


def _baseline(at: dt.datetime) -> float:
    """Couples and planners with no wedding on: office hours and evenings, by season."""
    base = 20.0
    if at.weekday() < 5 and 8 <= at.hour < 17:
        base += 50.0  # planners at their desks (Europe, UTC)
    if 18 <= at.hour < 23:
        base += 25.0  # couples in the evening
    return base * (0.8 + 2 * MONTH_SHARE[at.month - 1])


def synthetic_history(
    start: dt.date,
    days: int,
    seed: int,
    weddings_per_year: int = 5000,
    *,
    model_profile: bool = False,
) -> History:
    """``days`` days of 15-minute truth from ``start`` (UTC), with a viral day and a storm;
    each wedding with a profile of its own unless ``model_profile``. The calendar and the
    noise are the same either way (the profiles come from a generator of their own)."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible history, not security)
    shapes = random.Random(f"{seed}:profiles")  # noqa: S311
    t0 = dt.datetime(start.year, start.month, start.day, tzinfo=UTC)
    end = t0 + dt.timedelta(days=days)
    weddings: list[SyntheticWedding] = []
    for year in range(start.year - 1, end.year + 1):
        weddings += wedding_calendar(year, weddings_per_year, rng)
    if not model_profile:
        weddings = [replace(w, profile=wedding_profile(shapes)) for w in weddings]
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
                weddings[i] = replace(w, ceremony_utc=w.ceremony_utc + dt.timedelta(days=1))
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
        params = DemandParams(devices_per_vendor=w.devices_per_vendor)
        add_wedding(conn, t0, actual, params, w.profile)
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
