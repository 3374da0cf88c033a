"""Scaling decisions: a pure function of the forecast, the current metrics, the current
capacity and the policy, giving the desired ASGI processes, Celery workers and
connection limit, with the reason in words.

The rules, in order (docs/scaling.md says why):

1. Forecast: the comfortable capacity of the busiest slot from now to ``prescale_lead``
   (1 h) ahead, so a peak's processes are up before it arrives; ``headroom`` (30 %) over
   it, and over the current load, from ``headroom_lead`` (15 min) ahead: an hour of
   headroom before every ramp cost more process-hours than reactive-only used and bought
   no under-capacity minute (ADR 0029, amendment).
2. Reactive: current connections above ``high_utilisation`` of capacity, p95 latency,
   CPU or error rate over their limits scale out by ``scale_out_factor`` of the current
   count, whatever the forecast says: the forecast can be wrong, the load is not.
3. Hysteresis: out at once to the target; in only when the target is below the current
   count even with ``scale_in_margin`` extra headroom, and by ``scale_in_step`` at a time.
   With a forecast that reaches ``scale_in_lead`` (2 h) ahead, a scale-in is to the
   busiest slot of those 2 h with ``headroom`` alone, in one go, after the shorter
   ``forecast_scale_in_cooldown``: the calendar has seen the next peak, so the margin
   against a dip between two peaks is not needed.
4. Cooldown: no change within ``scale_out_cooldown`` of the last one; no scale-in within
   ``scale_in_cooldown``.
5. Saturday protocol: while weddings are in their window (``window_lead`` before the
   ceremony to the end of the timeline), no scale-in below what the forecast says is
   needed until the last of those windows closes (with ``headroom``): the capacity those
   weddings will need again is never drained in between, and what nobody will need is
   released (ADR 0029).
6. Bounds: ``min_*``/``max_*`` last, whatever the rules above said.

A ``notice`` is set when a slot within ``notice_lead`` (24 h) needs more processes than
now: the caller posts it on the ``ops`` topic (once per peak; that is the caller's job).

``reservations`` (capacity reserved a day ahead for a forecast peak, ADR 0033) raise the
minimums of rule 6 while ``now`` is within their span, and only then: a reservation never
lowers what the rules above want.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from scaling.demand import Forecast, SlotForecast, WeddingPlan


@dataclass(frozen=True)
class ScalingPolicy:
    """Tuning of the decision rules; the defaults are the issue's (#7) and ops' estimates."""

    # What one ASGI process carries comfortably, and the hard cap it admits.
    connections_per_process: int = 1000
    connection_limit_per_process: int = 1500
    # Deliveries/s one Celery worker keeps up with (fan-out, notifications).
    deliveries_per_worker: float = 200.0
    headroom: float = 0.30
    min_asgi: int = 2  # two, so one process dying never takes every socket down
    max_asgi: int = 40
    min_workers: int = 1
    max_workers: int = 20
    # Reactive limits: any one over its value scales out now.
    high_utilisation: float = 0.80  # connections / (processes × connections_per_process)
    latency_p95_max_s: float = 0.5
    cpu_max: float = 0.75
    error_rate_max: float = 0.02
    scale_out_factor: float = 0.5  # a reactive scale-out adds half the current count
    # Hysteresis: a scale-in needs this much more headroom than a scale-out, and goes
    # one step at a time, so a dip between two peaks does not flap the fleet.
    scale_in_margin: float = 0.20
    # A scale-in the forecast covers keeps a smaller margin: the forecast has seen the
    # next peak, but a slot can still come in above it (its error is ~14 % MAPE): 5 %
    # more than the headroom (0 % saw a 15-minute shortfall the stepping policy did not).
    forecast_scale_in_margin: float = 0.05
    scale_in_step: int = 1
    # A scale-in the forecast covers (it saw the next ``scale_in_lead`` and still wants
    # less) goes straight to its target after this shorter cooldown: the calendar says the
    # load will not be back, where a reactive policy can only step down and wait.
    forecast_scale_in_cooldown: dt.timedelta = dt.timedelta(minutes=15)
    scale_out_cooldown: dt.timedelta = dt.timedelta(minutes=2)
    scale_in_cooldown: dt.timedelta = dt.timedelta(minutes=30)
    prescale_lead: dt.timedelta = dt.timedelta(hours=1)
    # The headroom over a forecast slot is provisioned this far ahead of it (one slot, the
    # forecast's resolution); from prescale_lead until then the slot gets its comfortable
    # capacity only. A process starts in seconds and the reactive rules see the load as it
    # comes, so an hour of headroom ahead of every ramp bought no under-capacity minute and
    # cost more process-hours than the reactive policy spent (ADR 0029). A value above
    # prescale_lead acts as prescale_lead.
    headroom_lead: dt.timedelta = dt.timedelta(minutes=15)
    scale_in_lead: dt.timedelta = dt.timedelta(hours=2)
    notice_lead: dt.timedelta = dt.timedelta(hours=24)
    window_lead: dt.timedelta = dt.timedelta(hours=2)


@dataclass(frozen=True)
class CurrentMetrics:
    """The latest readings (a ``MetricSnapshot``); None is 'not measured'."""

    connections: int
    deliveries_per_s: float | None = None
    latency_p95_s: float | None = None
    cpu: float | None = None  # 0..1, busiest process
    error_rate: float | None = None  # 0..1


@dataclass(frozen=True)
class Capacity:
    """What runs now, and when it last changed (None: never, so no cooldown)."""

    asgi_processes: int
    celery_workers: int
    connection_limit: int
    last_change_at: dt.datetime | None = None


@dataclass(frozen=True)
class Notice:
    """A forecast peak the ops topic should hear about a day ahead."""

    peak_at: dt.datetime
    connections: float
    asgi_processes: int


@dataclass(frozen=True)
class Reservation:
    """Capacity reserved for a forecast peak: at least ``asgi`` processes and ``workers``
    workers from ``starts_at`` until ``ends_at`` (``scaling.models.CapacityReservation``)."""

    id: int
    peak_at: dt.datetime
    asgi: int
    workers: int
    starts_at: dt.datetime
    ends_at: dt.datetime

    def holds(self, now: dt.datetime) -> bool:
        """Whether the reservation is in force at ``now``: from its start, until its end."""
        return self.starts_at <= now < self.ends_at


def reserved_minimum(
    reservations: tuple[Reservation, ...], now: dt.datetime
) -> tuple[int, int, Reservation | None]:
    """The processes and workers the reservations in force at ``now`` hold (the largest of
    each), and the one holding the most processes; zeros and None when none is."""
    held = [r for r in reservations if r.holds(now)]
    if not held:
        return 0, 0, None
    top = max(held, key=lambda r: (r.asgi, r.workers))
    return max(r.asgi for r in held), max(r.workers for r in held), top


@dataclass(frozen=True)
class Decision:
    """The desired capacity, whether it changes, why, and the inputs it came from."""

    asgi_processes: int
    celery_workers: int
    connection_limit: int
    action: str  # "scale_out", "scale_in" or "hold"
    reasons: tuple[str, ...]
    notice: Notice | None = None
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """The reasons as one sentence list, for the audit row and the ops topic."""
        return "; ".join(self.reasons)


def _need(load: float, per_unit: float, headroom: float) -> int:
    return math.ceil(load * (1 + headroom) / per_unit) if load > 0 else 0


_SLOT = dt.timedelta(minutes=15)


def _peak(slots: tuple[SlotForecast, ...], start: dt.datetime, end: dt.datetime):
    """The slot with the most connections among those overlapping [start, end]."""
    inside = [s for s in slots if s.start_utc <= end and s.start_utc + _SLOT > start]
    return max(inside, key=lambda s: s.connections, default=None)


def weddings_in_window(
    weddings: tuple[WeddingPlan, ...], now: dt.datetime, lead: dt.timedelta
) -> list[WeddingPlan]:
    """The weddings between ``lead`` before their ceremony and the end of their timeline."""
    return [w for w in weddings if w.ceremony_utc - lead <= now <= w.window_end_utc]


def _pressure(current: CurrentMetrics, capacity: Capacity, policy: ScalingPolicy) -> list[str]:
    """The reactive limits the current readings are over, in words."""
    found = []
    room = capacity.asgi_processes * policy.connections_per_process
    if room and current.connections / room >= policy.high_utilisation:
        found.append(
            f"connections {current.connections} are {current.connections / room:.0%} of "
            f"capacity {room} (limit {policy.high_utilisation:.0%})"
        )
    if current.latency_p95_s is not None and current.latency_p95_s > policy.latency_p95_max_s:
        found.append(
            f"p95 latency {current.latency_p95_s * 1000:.0f} ms over "
            f"{policy.latency_p95_max_s * 1000:.0f} ms"
        )
    if current.cpu is not None and current.cpu > policy.cpu_max:
        found.append(f"CPU {current.cpu:.0%} over {policy.cpu_max:.0%}")
    if current.error_rate is not None and current.error_rate > policy.error_rate_max:
        found.append(f"error rate {current.error_rate:.1%} over {policy.error_rate_max:.1%}")
    return found


@dataclass(frozen=True)
class WindowFloor:
    """What the Saturday protocol holds: the processes and workers the forecast needs from
    now until ``until`` (the last in-window wedding's window end), and why."""

    asgi: int
    workers: int
    until: dt.datetime
    weddings: int
    connections: float


def window_floor(
    forecast: Forecast, in_window: list[WeddingPlan], now: dt.datetime, policy: ScalingPolicy
) -> WindowFloor | None:
    """The Saturday protocol's floor while ``in_window`` is not empty: the busiest forecast
    slot between now and the end of the last window, with the policy's headroom. A slot
    the forecast does not cover (beyond its horizon) is not counted."""
    if not in_window:
        return None
    until = max(w.window_end_utc for w in in_window)
    inside = [s for s in forecast.slots if s.start_utc <= until and s.start_utc + _SLOT > now]
    connections = max((s.connections for s in inside), default=0.0)
    deliveries = max((s.deliveries_per_s for s in inside), default=0.0)
    return WindowFloor(
        asgi=_need(connections, policy.connections_per_process, policy.headroom),
        workers=_need(deliveries, policy.deliveries_per_worker, policy.headroom),
        until=until,
        weddings=len(in_window),
        connections=connections,
    )


def _settle(
    name: str,
    have: int,
    target: int,
    *,
    lower: int,
    upper: int,
    scale_in_target: int,
    scale_in_floor: int,
    floor_reason: str | None,
    forecast_covers: bool,
    since_change: dt.timedelta | None,
    policy: ScalingPolicy,
    reasons: list[str],
    lower_name: str = "minimum",
) -> int:
    """Apply hysteresis, cooldown, the Saturday protocol and bounds to one pool."""
    want = have
    if target > have:
        if since_change is not None and since_change < policy.scale_out_cooldown:
            reasons.append(f"{name}: scale-out to {target} waits for the cooldown")
        else:
            want = target
    elif scale_in_target < have:
        if scale_in_floor >= have:
            reasons.append(f"{name}: no scale-in, {floor_reason}")
        elif since_change is not None and since_change < (
            policy.forecast_scale_in_cooldown if forecast_covers else policy.scale_in_cooldown
        ):
            reasons.append(f"{name}: scale-in waits for the cooldown")
        else:
            step = have if forecast_covers else policy.scale_in_step
            want = max(scale_in_target, have - step, scale_in_floor)
            if want == scale_in_floor and scale_in_floor > scale_in_target:
                reasons.append(f"{name}: scale-in stops at {want}, {floor_reason}")
    elif target < have:
        reasons.append(f"{name}: {have} kept, the load is within the hysteresis band")
    bounded = min(upper, max(lower, want))
    if bounded != want:
        side = "maximum" if bounded < want else lower_name
        reasons.append(f"{name}: held at the {side} of {bounded} (wanted {want})")
    if bounded > have:
        reasons.append(f"{name}: {have} → {bounded}")
    elif bounded < have:
        reasons.append(f"{name}: {have} → {bounded}")
    return bounded


def decide(
    forecast: Forecast,
    current: CurrentMetrics,
    capacity: Capacity,
    policy: ScalingPolicy,
    now: dt.datetime,
    reservations: tuple[Reservation, ...] = (),
) -> Decision:
    """The capacity wanted now; called once a minute by the scaling evaluation.
    ``reservations`` in force at ``now`` raise the minimums (rule 6)."""
    reasons: list[str] = []
    # 1. Forecast: the busiest slot within prescale_lead at its comfortable capacity, and
    # the busiest within headroom_lead (or the current load) with the headroom.
    ahead = _peak(forecast.slots, now, now + policy.prescale_lead)
    headroom_lead = min(policy.headroom_lead, policy.prescale_lead)
    soon = _peak(forecast.slots, now, now + headroom_lead)
    forecast_conn = ahead.connections if ahead else 0.0
    forecast_del = ahead.deliveries_per_s if ahead else 0.0
    load_conn = max(forecast_conn, float(current.connections))
    load_del = max(forecast_del, current.deliveries_per_s or 0.0)
    soon_conn = max(soon.connections if soon else 0.0, float(current.connections))
    soon_del = max(soon.deliveries_per_s if soon else 0.0, current.deliveries_per_s or 0.0)
    near_target = _need(soon_conn, policy.connections_per_process, policy.headroom)
    far_target = _need(forecast_conn, policy.connections_per_process, 0.0)
    asgi_target = max(near_target, far_target)
    workers_target = max(
        _need(soon_del, policy.deliveries_per_worker, policy.headroom),
        _need(forecast_del, policy.deliveries_per_worker, 0.0),
    )
    if ahead and far_target > near_target:
        reasons.append(
            f"forecast peak of {forecast_conn:.0f} connections at "
            f"{ahead.start_utc:%a %H:%M} UTC (within {_hours(policy.prescale_lead)}) "
            f"needs {far_target} process(es) at comfortable capacity, "
            f"{policy.headroom:.0%} headroom from {_hours(headroom_lead)} before it"
        )
    elif soon and soon.connections > current.connections:
        reasons.append(
            f"forecast peak of {soon.connections:.0f} connections at "
            f"{soon.start_utc:%a %H:%M} UTC (within {_hours(headroom_lead)}) "
            f"needs {near_target} process(es) with {policy.headroom:.0%} headroom"
        )
    else:
        reasons.append(
            f"{current.connections} connections now need {asgi_target} process(es) "
            f"with {policy.headroom:.0%} headroom"
        )
    # 2. Reactive.
    pressure = _pressure(current, capacity, policy)
    if pressure:
        step = max(1, math.ceil(capacity.asgi_processes * policy.scale_out_factor))
        asgi_target = max(asgi_target, capacity.asgi_processes + step)
        step = max(1, math.ceil(capacity.celery_workers * policy.scale_out_factor))
        workers_target = max(workers_target, capacity.celery_workers + step)
        reasons.extend(pressure)
    # What a scale-in must keep: the busiest slot of the longer scale_in_lead, so capacity
    # released now is not wanted back within it.
    kept = _peak(forecast.slots, now, now + policy.scale_in_lead)
    keep_conn = max(load_conn, kept.connections if kept else 0.0)
    keep_del = max(load_del, kept.deliveries_per_s if kept else 0.0)
    # 3.-6. Hysteresis, cooldown, Saturday protocol, bounds.
    in_window = weddings_in_window(forecast.weddings, now, policy.window_lead)
    floor = window_floor(forecast, in_window, now, policy)
    floor_reason = None
    if floor is not None:
        floor_reason = (
            f"{floor.weddings} wedding(s) in their window need it until "
            f"{floor.until:%a %H:%M} UTC (Saturday protocol: {floor.connections:.0f} "
            "connections forecast)"
        )
    since = now - capacity.last_change_at if capacity.last_change_at else None
    # The forecast covers a scale-in when it reaches the whole scale_in_lead: the
    # target then holds its busiest slot, so most of the hysteresis margin (there so that
    # a dip between two peaks does not flap the fleet) is not needed: the forecast has
    # seen the next peak.
    covers = bool(forecast.slots) and forecast.slots[-1].start_utc + _SLOT >= (
        now + policy.scale_in_lead
    )
    margin = policy.headroom + (
        policy.forecast_scale_in_margin if covers else policy.scale_in_margin
    )
    common = {
        "floor_reason": floor_reason,
        "forecast_covers": covers,
        "since_change": since,
        "policy": policy,
    }
    reserved_asgi, reserved_workers, reserving = reserved_minimum(reservations, now)
    if reserving is not None:
        reasons.append(
            f"reservation #{reserving.id} for the peak at {reserving.peak_at:%a %H:%M} UTC "
            f"holds at least {reserved_asgi} process(es) and {reserved_workers} worker(s) "
            f"until {reserving.ends_at:%a %H:%M} UTC"
        )
    lower_name = "reserved minimum" if reserving is not None else "minimum"
    asgi = _settle(
        "ASGI processes",
        capacity.asgi_processes,
        asgi_target,
        lower=min(policy.max_asgi, max(policy.min_asgi, reserved_asgi)),
        lower_name=lower_name,
        upper=policy.max_asgi,
        scale_in_target=_need(keep_conn, policy.connections_per_process, margin),
        scale_in_floor=floor.asgi if floor else 0,
        reasons=reasons,
        **common,
    )
    workers = _settle(
        "Celery workers",
        capacity.celery_workers,
        workers_target,
        lower=min(policy.max_workers, max(policy.min_workers, reserved_workers)),
        lower_name=lower_name,
        upper=policy.max_workers,
        scale_in_target=_need(keep_del, policy.deliveries_per_worker, margin),
        scale_in_floor=floor.workers if floor else 0,
        reasons=reasons,
        **common,
    )
    if asgi > capacity.asgi_processes or workers > capacity.celery_workers:
        action = "scale_out"
    elif asgi < capacity.asgi_processes or workers < capacity.celery_workers:
        action = "scale_in"
    else:
        action = "hold"
    # The 24 h notice.
    notice = None
    later = _peak(forecast.slots, now, now + policy.notice_lead)
    if later is not None:
        needed = _need(later.connections, policy.connections_per_process, policy.headroom)
        if needed > capacity.asgi_processes:
            notice = Notice(later.start_utc, later.connections, min(needed, policy.max_asgi))
            reasons.append(
                f"notice: {later.connections:.0f} connections expected at "
                f"{later.start_utc:%a %d %b %H:%M} UTC need {needed} process(es)"
            )
    return Decision(
        asgi_processes=asgi,
        celery_workers=workers,
        connection_limit=asgi * policy.connection_limit_per_process,
        action=action,
        reasons=tuple(reasons),
        notice=notice,
        inputs={
            **_inputs(forecast, ahead, current, capacity, policy, now, in_window, floor),
            **({"reservation": plain(asdict(reserving))} if reserving is not None else {}),
        },
    )


def _hours(delta: dt.timedelta) -> str:
    """A lead in words: hours, or minutes below one hour ("1 h", "15 min")."""
    seconds = delta.total_seconds()
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"


def plain(value: Any) -> Any:
    """``value`` with its datetimes (ISO strings) and timedeltas (seconds) JSON-ready,
    through dicts: what a decision's audit ``inputs`` hold."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _inputs(
    forecast: Forecast,
    ahead: SlotForecast | None,
    current: CurrentMetrics,
    capacity: Capacity,
    policy: ScalingPolicy,
    now: dt.datetime,
    in_window: list[WeddingPlan],
    floor: WindowFloor | None,
) -> dict[str, Any]:
    """What the decision saw, as JSON-ready values (for the audit row to come)."""
    return {
        "now": now.isoformat(),
        "forecast_made_at": forecast.made_at.isoformat(),
        "forecast_peak": plain(asdict(ahead)) if ahead else None,
        "current": asdict(current),
        "capacity": plain(asdict(capacity)),
        "policy": plain(asdict(policy)),
        "weddings_in_window": [w.wedding_id for w in in_window],
        "window_floor": plain(asdict(floor)) if floor else None,
    }
