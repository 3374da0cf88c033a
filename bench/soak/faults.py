"""The soak's faults, their schedule, and what each is expected to raise.

Four kinds, each injected the way it happens in production:

``worker``    SIGKILL of one server worker (a crash, an OOM kill). The supervisor starts a
              new one within a second; the dead worker's clients reconnect with
              ``since``. **No alert by design**: nothing a minute snapshot measures stays
              wrong long enough (connections drop and come back on the other worker).
``redis``     Redis stopped, and started again (empty) after ``--redis-down`` seconds. The
              servers' Redis circuit breakers open: ``circuit_breaker_open`` is expected
              when the outage spans an evaluation (``--redis-down`` at least
              ``--evaluate-every`` plus the breakers' sampling interval), and resolves
              once the breakers closed and the condition stayed clear.
``postgres``  ``pg_terminate_backend`` of every backend of the server (its connection
              pools', by ``application_name``; never the soak's or the evaluator's). The
              calls that meet a dead connection fail, five in a row open the server's
              database breaker, which refuses every call for ``DATABASE_BREAKER_RESET``
              (2 s): publishes get ``unavailable`` and the publishers' retries (same
              idempotency key) are refused as fast as they come. ``error_rate`` is
              expected (docs/operations.md: the database's alert), and resolves.
``stall``     every frame the server's host sends held for ``--stall`` seconds (2), then
              the link runs free: ``tc netem delay`` on its interface, or the relay's delay
              without netem; nothing is lost, everything is late. **No alert by design** at
              the minute cadence: 2 s of late deliveries are ~3 % of a minute's, under the
              latency rule's p95.

Faults of one cycle go in this order; ``--cycles`` repeats it. They are spread evenly
from the end of the warm-up to ``duration - reserve``, so that the alerts of the last
one have time to resolve while the load still runs, each in the middle between two
evaluations.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import close_old_connections, connection

from .world import kill_quietly

if TYPE_CHECKING:
    from .world import World

KINDS = ("worker", "redis", "postgres", "stall")
# The servers sample their breakers every METRICS_SAMPLE_INTERVAL (5 s): an outage must
# outlast one evaluation interval by that much for a snapshot to be sure to see it.
BREAKER_SAMPLE_S = 5.0
WORKER_RESTART_TIMEOUT_S = 30.0


@dataclass
class Fault:
    """One scheduled fault and, once injected, what happened."""

    kind: str
    at_s: float  # seconds after the load started
    expected_alerts: tuple[str, ...] = ()
    why_none: str = ""
    started_wall: float | None = None  # time.time() when injected
    ended_wall: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "at_s": round(self.at_s, 1),
            "started": self.started_wall,
            "lasted_s": round(self.ended_wall - self.started_wall, 3)
            if self.ended_wall and self.started_wall
            else None,
            "skipped": self.skipped,
            "expected_alerts": list(self.expected_alerts),
            "why_no_alert": self.why_none or None,
            "detail": self.detail,
        }


def expectations(kind: str, *, redis_down: float, evaluate_every: float
                 ) -> tuple[tuple[str, ...], str]:  # fmt: skip
    """(rules the fault must open, why none when it need not) for one kind."""
    if kind == "postgres":
        return ("error_rate",), ""
    if kind == "redis":
        if redis_down >= evaluate_every + BREAKER_SAMPLE_S:
            return ("circuit_breaker_open",), ""
        return (), (
            f"Redis was down {redis_down:g} s, less than an evaluation interval "
            f"({evaluate_every:g} s) + the breakers' sampling ({BREAKER_SAMPLE_S:g} s): "
            "an evaluation may or may not fall inside the outage"
        )
    return (), {
        "worker": "the supervisor replaces a killed worker within a second and its clients "
        "reconnect: no figure stays out of bounds until an evaluation",
        "stall": "a few seconds of late deliveries: at a minute's evaluation, under 5 % "
        "of its deliveries, below the latency rule's p95 (a short --evaluate-every may "
        "see it)",
    }[kind]


def schedule(kinds: list[str], cycles: int, *, warmup: float, last_at: float,
             redis_down: float, evaluate_every: float) -> list[Fault]:  # fmt: skip
    """The faults, evenly spaced over [warmup, last_at], each moved on to the middle
    between two evaluations (``evaluate_every`` apart from the start of the load), so
    that an evaluation that opens an alert right after a fault did not measure mostly
    the time before it (the alert is put down to the fault before it)."""
    count = len(kinds) * cycles
    step = (last_at - warmup) / (count - 1) if count > 1 else 0.0
    faults = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        expected, why = expectations(kind, redis_down=redis_down, evaluate_every=evaluate_every)
        at = warmup + index * step
        middle = (math.ceil(at / evaluate_every - 0.5) + 0.5) * evaluate_every
        faults.append(Fault(kind, middle, expected, why))
    return faults


async def inject(fault: Fault, world: World, *, redis_down: float, stall: float) -> None:
    """Inject ``fault`` and return once it is over (the repair, where the soak makes it)."""
    fault.started_wall = time.time()
    try:
        if fault.kind == "worker":
            await _kill_worker(fault, world)
        elif fault.kind == "redis":
            await _restart_redis(fault, world, redis_down)
        elif fault.kind == "postgres":
            fault.detail["terminated"] = await asyncio.to_thread(_terminate, world.app_name)
        elif fault.kind == "stall":
            await _stall(fault, world, stall)
    finally:
        fault.ended_wall = time.time()


async def _kill_worker(fault: Fault, world: World) -> None:
    before = world.worker_pids()
    if not before:
        fault.skipped = "no worker running"
        return
    victim = before[0]
    kill_quietly(victim, signal.SIGKILL)
    started = time.monotonic()
    fault.detail["killed_pid"] = victim
    while time.monotonic() - started < WORKER_RESTART_TIMEOUT_S:
        now = world.worker_pids()
        if victim not in now and len(now) >= len(before):
            fault.detail["replaced_by"] = sorted(set(now) - set(before))
            fault.detail["replaced_after_s"] = round(time.monotonic() - started, 2)
            return
        await asyncio.sleep(0.1)
    fault.detail["replaced_after_s"] = None  # the supervisor did not replace it


async def _restart_redis(fault: Fault, world: World, down: float) -> None:
    assert world.redis is not None
    await asyncio.to_thread(world.redis.stop)
    await asyncio.sleep(down)
    started = time.monotonic()
    await asyncio.to_thread(world.redis.start)
    fault.detail["down_s"] = round(time.time() - fault.started_wall, 2)
    fault.detail["start_s"] = round(time.monotonic() - started, 2)


def _terminate(app_name: str) -> int:
    """pg_terminate_backend of the server's backends (by application name); their count."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                [app_name],
            )
            return int(cursor.fetchone()[0])
    finally:
        close_old_connections()
        connection.close()


async def _stall(fault: Fault, world: World, seconds: float) -> None:
    if world.host is None:
        fault.skipped = f"no network namespaces here: {world.stall_unavailable}"
        return
    await asyncio.to_thread(world.host.set_delay, seconds)
    await asyncio.sleep(seconds)
    await asyncio.to_thread(world.host.set_delay, 0.0)
    fault.detail["held_s"] = seconds
