"""The fast reactive path (issue #18): an emergency scale-out decided from a reading the
server processes took seconds ago, a pure function like ``decisions.decide``.

The minute evaluation reacts to a snapshot up to a minute old and waits out a 2-minute
cooldown; this rule reads the live figures every ``SCALING_FAST_INTERVAL`` (5 s) and,
when one of its limits is over in two consecutive readings, scales out at once:

* connections over ``utilisation`` (90 %) of the capacity (ASGI processes of the current
  capacity × ``connections_per_process``: the average process is nearly full);
* delivery p95 between the two readings over ``latency_p95_s`` (1 s), once at least
  ``min_latency_samples`` deliveries were measured (a handful is no percentile);
* the busiest server process's CPU over ``cpu`` (90 % of a core);
* frames queued in outboxes, per ASGI process, over ``outbox_per_process`` (2,000): the
  processes are writing slower than events arrive.

Its limits sit above the minute rule's (80 %, 500 ms, 75 %): this one skips the
cooldown, so it fires on a clear breach only. It only ever scales out, by the reactive
step of the minute rule (``scale_out_factor`` of the current count) or to what the
connections need with headroom, whichever is more, within ``max_*``. The caller
(``scaling.services.scaling_emergency_check``) keeps the streak, the cooldown and the
"unless the breach grows" rule; docs/scaling.md says why.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any

from scaling.decisions import Capacity, Decision, ScalingPolicy, plain


@dataclass(frozen=True)
class FastReading:
    """The server processes' figures now (monitoring's fast reader, scaling.readings).

    ``latency_p95_s`` covers the deliveries of the ``window_s`` seconds since the previous
    fast reading (``latency_samples`` of them); None without one. ``partial``: some hosts
    of ``METRICS_PEERS`` did not answer, so the figures count the others only (they can
    hide a breach, never make one up).
    """

    at: dt.datetime
    connections: int
    latency_p95_s: float | None = None
    latency_samples: int = 0
    window_s: float | None = None
    cpu: float | None = None  # 0..1 of a core, the busiest server process
    outbox_depth: int = 0  # frames queued in every connection's outbox, all processes
    partial: bool = False


@dataclass(frozen=True)
class EmergencyThresholds:
    """The emergency rule's limits (settings ``SCALING_FAST_*``, docs/configuration.md)."""

    utilisation: float = 0.90
    latency_p95_s: float = 1.0
    cpu: float = 0.90
    outbox_per_process: int = 2000
    # A p95 of fewer deliveries than this is noise (one slow socket), not a breach.
    min_latency_samples: int = 20
    # Within the cooldown of an emergency scale-out, another one needs a breach this much
    # worse than the one that made it (the new processes take a minute to start; until
    # then the figures stay over their limits without anything new happening).
    growth: float = 1.25


@dataclass(frozen=True)
class Breach:
    """One limit a reading is over: which, by how much, in words."""

    rule: str  # "connections", "latency", "cpu" or "outbox"
    value: float
    limit: float
    text: str

    @property
    def severity(self) -> float:
        """The value over its limit (1.2: 20 % over); compared to decide a repeat."""
        return self.value / self.limit if self.limit > 0 else math.inf


def breaches(
    reading: FastReading,
    capacity: Capacity,
    policy: ScalingPolicy,
    limits: EmergencyThresholds,
) -> list[Breach]:
    """The emergency limits ``reading`` is over, against the current ``capacity``."""
    found = []
    processes = max(1, capacity.asgi_processes)
    room = processes * policy.connections_per_process
    if room and reading.connections / room > limits.utilisation:
        found.append(
            Breach(
                "connections",
                reading.connections / room,
                limits.utilisation,
                f"connections {reading.connections} are {reading.connections / room:.0%} of "
                f"capacity {room} (emergency limit {limits.utilisation:.0%})",
            )
        )
    p95 = reading.latency_p95_s
    if p95 is not None and reading.latency_samples >= limits.min_latency_samples:
        if p95 > limits.latency_p95_s:
            found.append(
                Breach(
                    "latency",
                    p95,
                    limits.latency_p95_s,
                    f"delivery p95 {p95 * 1000:.0f} ms over {reading.latency_samples} "
                    f"deliveries (emergency limit {limits.latency_p95_s * 1000:.0f} ms)",
                )
            )
    if reading.cpu is not None and reading.cpu > limits.cpu:
        found.append(
            Breach(
                "cpu",
                reading.cpu,
                limits.cpu,
                f"busiest server process CPU {reading.cpu:.0%} (emergency limit {limits.cpu:.0%})",
            )
        )
    per_process = reading.outbox_depth / processes
    if per_process > limits.outbox_per_process:
        found.append(
            Breach(
                "outbox",
                per_process,
                limits.outbox_per_process,
                f"{per_process:.0f} frames queued per process "
                f"(emergency limit {limits.outbox_per_process})",
            )
        )
    return found


def severity(found: list[Breach]) -> float:
    """How far over its limit the worst breach is (0 without one)."""
    return max((b.severity for b in found), default=0.0)


def emergency_decide(
    reading: FastReading,
    found: list[Breach],
    capacity: Capacity,
    policy: ScalingPolicy,
    now: dt.datetime,
    *,
    streak: int,
    interval: float,
) -> Decision | None:
    """The emergency scale-out for ``found`` (never a scale-in, never past ``max_*``), or
    None when there is no breach or the bounds leave nothing to add."""
    if not found:
        return None
    step = max(1, math.ceil(capacity.asgi_processes * policy.scale_out_factor))
    needed = math.ceil(reading.connections * (1 + policy.headroom) / policy.connections_per_process)
    asgi = min(policy.max_asgi, max(capacity.asgi_processes + step, needed))
    step = max(1, math.ceil(capacity.celery_workers * policy.scale_out_factor))
    workers = min(policy.max_workers, capacity.celery_workers + step)
    asgi, workers = max(asgi, capacity.asgi_processes), max(workers, capacity.celery_workers)
    if (asgi, workers) == (capacity.asgi_processes, capacity.celery_workers):
        return None
    reasons = [
        f"emergency rule (fast path): over its limit in {streak} readings "
        f"{interval:g} s apart: " + "; ".join(b.text for b in found)
    ]
    if reading.partial:
        reasons.append("some hosts did not answer: the figures count the others only")
    for name, have, want, upper in (
        ("ASGI processes", capacity.asgi_processes, asgi, policy.max_asgi),
        ("Celery workers", capacity.celery_workers, workers, policy.max_workers),
    ):
        if want > have:
            reasons.append(f"{name}: {have} → {want}")
        if want == upper:
            reasons.append(f"{name}: held at the maximum of {upper}")
    return Decision(
        asgi_processes=asgi,
        celery_workers=workers,
        connection_limit=asgi * policy.connection_limit_per_process,
        action="scale_out",
        reasons=tuple(reasons),
        inputs=_inputs(reading, found, capacity, policy, now, streak),
    )


def _inputs(
    reading: FastReading,
    found: list[Breach],
    capacity: Capacity,
    policy: ScalingPolicy,
    now: dt.datetime,
    streak: int,
) -> dict[str, Any]:
    """What the emergency decision saw, JSON-ready; ``emergency`` marks the row as one."""
    return {
        "now": now.isoformat(),
        "emergency": {
            "rules": [b.rule for b in found],
            # Finite for JSON: a limit set to 0 makes any value infinitely over it.
            "severity": min(severity(found), 1e9),
            "streak": streak,
            "reading": plain(asdict(reading)),
        },
        "capacity": plain(asdict(capacity)),
        "policy": plain(asdict(policy)),
    }
