"""The alert rules: what each one measures, and the pure decision of its level.

Thresholds live in ``AlertRule`` rows (admin), seeded from
``settings.MONITORING_ALERT_RULES``; this module only says what a rule's value is and
which way is bad. ``level()`` is a pure function of a value and two thresholds, so the
evaluation in ``monitoring.services`` is easy to follow and to test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ABOVE, BELOW = "above", "below"


@dataclass(frozen=True)
class RuleSpec:
    """A rule: its key, what its value measures, its unit, and which way is bad."""

    key: str
    title: str
    description: str
    unit: str
    direction: Literal["above", "below"] = ABOVE
    # Resolve as soon as the condition is clear, without damping (the condition cannot
    # flap: an acknowledged event stays acknowledged).
    resolve_at_once: bool = False


RULES: dict[str, RuleSpec] = {
    spec.key: spec
    for spec in (
        RuleSpec(
            "delivery_latency_p95",
            "Delivery latency p95",
            "95th percentile of stored -> written to the socket over the last minute "
            "(at least 20 deliveries)",
            "s",
        ),
        RuleSpec(
            "error_rate",
            "Error rate",
            "error replies per frame received over the last minute (at least 50 frames)",
            "ratio",
        ),
        RuleSpec(
            "connection_utilisation",
            "Connection utilisation",
            "open connections of the busiest supplier / the per-supplier limit in force",
            "ratio",
        ),
        RuleSpec(
            "cache_hit_ratio",
            "Cache hit ratio",
            "reads served by either cache tier over the last minute (at least 100 reads)",
            "ratio",
            BELOW,
        ),
        RuleSpec(
            "circuit_breaker_open",
            "Circuit breaker open",
            "Redis circuit breakers open in any process of this host",
            "breakers",
        ),
        RuleSpec(
            "celery_beat_late",
            "Celery beat late",
            "seconds since the last minute snapshot (beat or the workers are not running)",
            "s",
        ),
        RuleSpec(
            "scaling_actuator_failed",
            "Scaling actuator failing",
            "scaling decisions in a row that the actuator failed to apply",
            "decisions",
            resolve_at_once=True,
        ),
        RuleSpec(
            "ack_overdue",
            "Acknowledgement overdue",
            "minutes an ack_required event has waited for a booked supplier's acknowledgement",
            "min",
            resolve_at_once=True,
        ),
    )
}

# Figures below these counts in a minute say too little to alert on.
MIN_DELIVERIES_FOR_LATENCY = 20
MIN_FRAMES_FOR_ERROR_RATE = 50
MIN_READS_FOR_HIT_RATIO = 100


def level(value: float | None, *, warning: float, critical: float, direction: str = ABOVE
          ) -> str | None:  # fmt: skip
    """'critical', 'warning' or None (clear, or no value) for ``value``."""
    if value is None:
        return None
    if direction == BELOW:
        if value <= critical:
            return "critical"
        return "warning" if value <= warning else None
    if value >= critical:
        return "critical"
    return "warning" if value >= warning else None
