"""The backtest's figures: forecast errors (MAPE, bias) against seasonal-naive and
reactive last-value, each capacity policy's cost, and the event days, as JSON."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

from scaling.decisions import ScalingPolicy

from .history import SLOTS_PER_DAY, WEEK_SLOTS, History

if TYPE_CHECKING:
    from .replaying import Fleet


def scored_from(history: History, warmup_days: int) -> int:
    """The first slot scored: after the warm-up, and never before a week of history
    (seasonal-naive needs the week before)."""
    return min(history.slots, max(warmup_days * SLOTS_PER_DAY, WEEK_SLOTS))


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


def report(
    history: History,
    expected: list[float],
    model_fc: list[float],
    fleets: dict[str, Fleet],
    warmup_days: int,
    min_truth: float,
    policy: ScalingPolicy,
    prices: tuple[float, float] | None = None,
) -> dict:
    """The figures over the days after the warm-up; with ``prices`` (per process-hour,
    per worker-hour) each policy's cost."""
    lo = scored_from(history, warmup_days)
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
        if prices is not None:
            p = policies[name]
            p["cost"] = p["process_hours"] * prices[0] + p["worker_hours"] * prices[1]
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
        "event_days": _event_days(history, model_fc, fleets, lo, min_truth, policy),
        "model_vs_naive_mape_reduction_pct": (
            100 * (1 - model / naive_mape) if model is not None and naive_mape else None
        ),
    }


def _event_days(
    history: History,
    model_fc: list[float],
    fleets: dict[str, Fleet],
    lo: int,
    min_truth: float,
    policy: ScalingPolicy,
) -> list[dict]:
    """Each event's day and the next (the storm moves weddings to it), when scored."""
    event_days = []
    for event in history.events:
        day = (dt.date.fromisoformat(event["date"]) - history.start.date()).days
        for d in (day, day + 1):
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
    return event_days
