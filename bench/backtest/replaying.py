"""The replay: a history day by day through the demand model and ``decide()``, as
production runs them (a forecast made at midnight UTC from the last weeks' correction,
a decision every 15-minute slot from the slot before's reading), next to reactive-only
(``decide()`` with no forecast) and, if asked, the model without the Saturday protocol.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from scaling.decisions import (
    Capacity,
    CurrentMetrics,
    ScalingPolicy,
    decide,
    weddings_in_window,
)
from scaling.demand import (
    SLOT,
    DemandParams,
    Forecast,
    hour_of_week,
    relevant,
    slot_forecast,
)

from .history import MAX_WINDOW_HOURS, SLOTS_PER_DAY, History
from .model import RollingCorrection, model_expected
from .scoring import report, scored_from

WINDOW_REACH = dt.timedelta(hours=MAX_WINDOW_HOURS)


@dataclass
class Fleet:
    """One capacity policy replayed: its state and its per-slot capacity."""

    capacity: Capacity
    processes: list[int] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)
    changes: int = 0

    @classmethod
    def at_minimum(cls, policy: ScalingPolicy) -> Fleet:
        """A fleet at the policy's minimums (production's capacity before any decision)."""
        return cls(
            Capacity(
                policy.min_asgi,
                policy.min_workers,
                policy.min_asgi * policy.connection_limit_per_process,
            )
        )

    def step(
        self, forecast: Forecast, current: CurrentMetrics, policy: ScalingPolicy, now: dt.datetime
    ) -> None:
        """Decide, and apply the decision at once (the last change is its time)."""
        decision = decide(forecast, current, self.capacity, policy, now)
        changed = decision.action != "hold"
        if changed:
            self.changes += 1
        self.capacity = Capacity(
            decision.asgi_processes,
            decision.celery_workers,
            decision.connection_limit,
            now if changed else self.capacity.last_change_at,
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
    prices: tuple[float, float] | None = None,
) -> dict:
    """Replay ``history`` day by day; the forecast errors and each policy's cost, as JSON
    (with ``prices``, per process-hour and per worker-hour, each policy's cost too)."""
    params = params or DemandParams()
    policy = policy or ScalingPolicy()
    n, truth, deli = history.slots, history.connections, history.deliveries
    expected = model_expected(history, params)
    how = [hour_of_week(history.at(t)) for t in range(n)]
    rolling = RollingCorrection(params)
    model_fc = [0.0] * n
    # The forecast handed to decide() reaches past the longest wedding window (window lead
    # + up to 12 h of timeline), as production's 48 h forecast does: the Saturday
    # protocol's floor reads it up to the end of the last window.
    lookahead = math.ceil(max(policy.scale_in_lead, policy.window_lead + WINDOW_REACH) / SLOT) + 1
    fleets = {
        "demand_model": Fleet.at_minimum(policy),
        "reactive_only": Fleet.at_minimum(policy),
    }
    if without_protocol:
        # The same forecast without the Saturday protocol (no weddings passed to decide):
        # separates what the forecast costs from what "no scale-in in a window" costs.
        fleets["demand_model_no_protocol"] = Fleet.at_minimum(policy)
    in_window_slots = 0
    lo = scored_from(history, warmup_days)
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
        slots = [slot_forecast(history.at(t), expected[t], corr, params) for t in range(first, end)]
        for i, slot in enumerate(slots[:SLOTS_PER_DAY]):
            model_fc[first + i] = slot.connections
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
    result = report(history, expected, model_fc, fleets, warmup_days, min_truth, policy, prices)
    result["share_of_time_a_wedding_in_window_pct"] = (
        100 * in_window_slots / (n - lo) if n > lo else None
    )
    return result
