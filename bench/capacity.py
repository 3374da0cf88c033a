"""The capacity model of a big Saturday: what N weddings on one day need in ASGI processes,
Redis and PostgreSQL, hour by hour, from the demand model's curve and measured costs.

    python -m bench.capacity [--weddings 10000] [--devices 1.5] [--date 2027-09-18]

The connections come from ``scaling.demand`` (``LOAD_PROFILE``, ``wedding_connections``)
over a calendar spread like the backtest's (``TIME_ZONES``, ``CEREMONY_HOURS``), with
every wedding's vendors and its couple as the people who connect. The costs are the
figures of docs/benchmarks.md (``MEASURED``: each field says where it comes from); the
policy's headroom and CPU limit are ``ScalingPolicy``'s. docs/capacity.md explains the
model, its assumptions and its answer. Development only, Django-free: pure functions and
a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from zoneinfo import ZoneInfo

from bench.backtest.history import CEREMONY_HOURS, TIME_ZONES
from scaling.decisions import ScalingPolicy
from scaling.demand import (
    DEFAULT_WINDOW_AFTER,
    PROFILE_END,
    PROFILE_START,
    SLOT,
    DemandParams,
    WeddingPlan,
    wedding_connections,
)

UTC = dt.UTC
# A ceremony starts on the hour twice as often as on the half hour (as in the backtest).
CEREMONY_MINUTES = ((0, 2 / 3), (30, 1 / 3))
MAX_WEDDINGS = 1_000_000


@dataclass(frozen=True)
class Measured:
    """What one thing costs, measured on 2 vCPUs (docs/benchmarks.md, the section named)."""

    # Server CPU, seconds of one core. "Before and after the house": fanout-max at 8,000
    # deliveries/s used 31 % of a core, at 20,000/s 72 %: 34 µs a delivery (fan-out 40,
    # the publish's share included); "The cost of the per-user limits" adds ~1 µs.
    cpu_per_delivery_s: float = 35e-6
    # An idle connection's keepalive, sweep and presence: saturday-peak's ~10.4 % of a core
    # at 1,000 connections and 2,000 deliveries/s, less 2,000 × 35 µs: ~34 µs a second.
    cpu_per_connection_s: float = 34e-6
    # "Connections: memory and the connect path": 1,000 clients dropped at once all had
    # every event 2.0-2.2 s after the drop (the process at a whole core): 2.1 ms each.
    storm_s_per_reconnect: float = 2.1e-3
    # The highest fanout-max step passing p99 ≤ 100 ms with the per-user limits.
    deliveries_per_process: float = 17_992.0
    # "Connections: memory and the connect path": 106 MiB before any, 25.0 KiB each.
    rss_base_mib: float = 106.0
    rss_per_connection_kib: float = 25.0
    # "Counts for the capacity model" (measured for this model on a private Redis and
    # PostgreSQL, two server processes). Redis counts include the commands its Lua
    # scripts run; its CPU was measured on a loaded machine (an upper bound).
    redis_cmds_per_event: float = 20.0
    redis_cpu_per_event_s: float = 235e-6
    # The sweep's heartbeat (presence and connection counts, every 5 s): per connected
    # second, whatever is published.
    redis_cmds_per_connection_s: float = 2.2
    redis_cpu_per_connection_s: float = 6e-6
    # Each more server process subscribed to a topic receives each of its events:
    # PUBLISH took 6 µs with 2 receivers; 2 µs a receiver is an estimate, not a measure.
    redis_cpu_per_pubsub_message_s: float = 2e-6
    # A drop and reconnect with `since` (registry, presence, replay window): 45-54
    # commands, 0.4-0.54 ms of Redis CPU (loaded machine).
    redis_cpu_per_reconnect_s: float = 0.45e-3
    # A publish: 2 statements, 2 transactions committed, 2 rows inserted and 1
    # updated; 1.0-1.45 KB of WAL (full-page images after a checkpoint
    # included). Idle connections write nothing to PostgreSQL (within the noise:
    # ~1 commit/s and ~1 KB/s of WAL per deployment, the sweeps).
    pg_commits_per_event: float = 2.0
    pg_wal_bytes_per_event: float = 1_250.0
    pg_commits_per_connection_s: float = 0.0
    pg_wal_bytes_per_connection_s: float = 0.0


MEASURED = Measured()


@dataclass(frozen=True)
class Limits:
    """The ceilings the load is held against."""

    # A process is sized to stay under the policy's reactive CPU limit (75 %).
    cpu: float = ScalingPolicy().cpu_max
    # The web pod's memory limit (deploy/k8s/base/web.yaml: one server process a pod).
    memory_mib: float = 1024.0
    # The reconnect storm target: every client has every event within 5 s.
    storm_s: float = 5.0
    # Redis runs every command on one thread: the same 75 % of one core.
    redis_cpu: float = 0.75


@dataclass(frozen=True)
class Assumptions:
    """The day: how many weddings, who connects, with how many devices."""

    weddings: int = 10_000
    date: dt.date = dt.date(2027, 9, 18)  # a busy-season Saturday, before either clock change
    vendors: int = 20
    couple: int = 2
    devices_per_person: float = DemandParams().devices_per_vendor  # 1.5; 2.1 in the backtest
    deliveries_per_connection: float = DemandParams().deliveries_per_connection
    headroom: float = ScalingPolicy().headroom
    connections_per_process_policy: int = ScalingPolicy().connections_per_process
    deliveries_per_worker: float = ScalingPolicy().deliveries_per_worker
    min_asgi: int = ScalingPolicy().min_asgi
    max_asgi: int = ScalingPolicy().max_asgi
    time_zones: tuple[tuple[str, float], ...] = TIME_ZONES
    ceremony_hours: tuple[tuple[int, float], ...] = CEREMONY_HOURS

    @property
    def people(self) -> int:
        """Who connects per wedding: the vendors and the couple."""
        return self.vendors + self.couple


@dataclass(frozen=True)
class ProcessCapacity:
    """Connections one ASGI process carries, by each limit; the smallest one binds."""

    by_cpu: int
    by_memory: int
    by_storm: int
    by_deliveries: int

    @property
    def connections(self) -> int:
        """The smallest of the limits."""
        return min(self.by_cpu, self.by_memory, self.by_storm, self.by_deliveries)

    @property
    def binding(self) -> str:
        """The name of the limit that binds."""
        limits = {
            "reconnect storm": self.by_storm,
            "CPU": self.by_cpu,
            "memory": self.by_memory,
            "deliveries": self.by_deliveries,
        }
        return min(limits, key=limits.__getitem__)


@dataclass(frozen=True)
class HourRow:
    """The busiest 15-minute slot of one UTC hour, and what it needs."""

    hour_utc: dt.datetime
    connections: float
    active_weddings: float
    events_per_s: float
    deliveries_per_s: float
    processes: int
    processes_policy: int
    workers_policy: int
    redis_cmds_per_s: float
    redis_cpu: float
    pubsub_messages_per_s: float
    pg_commits_per_s: float
    pg_wal_mb_per_s: float


@dataclass(frozen=True)
class Model:
    """The answer: the per-process capacity, the hours, the peak and the bottleneck."""

    assumptions: Assumptions
    capacity: ProcessCapacity
    rows: tuple[HourRow, ...]
    bottleneck: str
    # Seconds of Redis's one core a reconnect of every client at the peak takes at least.
    storm_redis_s: float = 0.0

    @property
    def peak(self) -> HourRow:
        """The hour with the most connections."""
        return max(self.rows, key=lambda r: r.connections)


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, whole numbers summing to ``total``
    (largest remainder: the biggest fractions get the leftover units)."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def saturday_calendar(a: Assumptions) -> list[tuple[WeddingPlan, int]]:
    """The day's weddings as (plan, how many such weddings): every time zone × local
    ceremony hour × minute in proportion to its share, as the demand model sees them
    (``vendors`` = the people who connect; the timeline ends 10 h after the ceremony)."""
    cells = [
        (zone, hour, minute, zw * hw * mw)
        for zone, zw in a.time_zones
        for hour, hw in a.ceremony_hours
        for minute, mw in CEREMONY_MINUTES
    ]
    counts = allocate(a.weddings, [w for *_, w in cells])
    calendar = []
    for (zone, hour, minute, _), count in zip(cells, counts, strict=True):
        if not count:
            continue
        local = dt.datetime.combine(a.date, dt.time(hour, minute), tzinfo=ZoneInfo(zone))
        ceremony = local.astimezone(UTC)
        plan = WeddingPlan(
            ceremony_utc=ceremony, vendors=a.people, window_end_utc=ceremony + DEFAULT_WINDOW_AFTER
        )
        calendar.append((plan, count))
    return calendar


def process_capacity(
    a: Assumptions, m: Measured = MEASURED, limits: Limits = Limits()
) -> ProcessCapacity:
    """Connections per process by CPU (at the day's deliveries per connection), memory,
    the reconnect storm (a fleet-wide reconnect: each process takes its own connections
    back within ``storm_s`` at a whole core) and the delivery ceiling."""
    cpu_each = m.cpu_per_connection_s + a.deliveries_per_connection * m.cpu_per_delivery_s
    memory = (limits.memory_mib - m.rss_base_mib) * 1024 / m.rss_per_connection_kib
    return ProcessCapacity(
        by_cpu=math.floor(limits.cpu / cpu_each),
        by_memory=math.floor(memory),
        by_storm=math.floor(limits.storm_s / m.storm_s_per_reconnect),
        by_deliveries=math.floor(m.deliveries_per_process / a.deliveries_per_connection),
    )


def need(load: float, per_unit: float, headroom: float) -> int:
    """Units for ``load`` with ``headroom`` (the policy's rule: ceil(load × (1 + h) / per))."""
    return math.ceil(load * (1 + headroom) / per_unit) if load > 0 else 0


def processes_per_topic(processes: int, devices: float) -> float:
    """Expected server processes holding at least one of a wedding's ``devices``
    connections, the connections spread evenly at random over ``processes``."""
    if processes <= 0 or devices <= 0:
        return 0.0
    return processes * (1 - (1 - 1 / processes) ** devices)


def slot_starts(calendar: Sequence[tuple[WeddingPlan, int]]) -> list[dt.datetime]:
    """Every 15-minute slot in which any wedding of the calendar may have a connection."""
    if not calendar:
        return []
    first = min(p.ceremony_utc for p, _ in calendar) + PROFILE_START
    last = max(max(p.ceremony_utc + PROFILE_END, p.window_end_utc) for p, _ in calendar)
    start = first.replace(minute=first.minute - first.minute % 15, second=0, microsecond=0)
    return [start + i * SLOT for i in range(math.ceil((last - start) / SLOT))]


def capacity_model(
    a: Assumptions = Assumptions(), m: Measured = MEASURED, limits: Limits = Limits()
) -> Model:
    """The hour-by-hour needs of the day (each hour its busiest slot) and the bottleneck."""
    params = DemandParams(
        devices_per_vendor=a.devices_per_person,
        deliveries_per_connection=a.deliveries_per_connection,
    )
    capacity = process_capacity(a, m, limits)
    calendar = saturday_calendar(a)
    busiest: dict[dt.datetime, HourRow] = {}
    for start in slot_starts(calendar):
        mid = start + SLOT / 2
        per_wedding = [(wedding_connections(p, mid, params), n) for p, n in calendar]
        connections = params.baseline_connections + sum(c * n for c, n in per_wedding)
        active = [(c, n) for c, n in per_wedding if c > 0]
        weddings = sum(n for _, n in active)
        deliveries = connections * params.deliveries_per_connection
        # One topic per wedding: each event reaches every connected device of its wedding,
        # so a wedding with anyone on carries deliveries_per_connection events a second.
        events = weddings * params.deliveries_per_connection
        processes = max(need(connections, capacity.connections, a.headroom), a.min_asgi)
        pubsub = sum(
            n * params.deliveries_per_connection * processes_per_topic(processes, c)
            for c, n in active
        )
        redis_cmds = events * m.redis_cmds_per_event + connections * m.redis_cmds_per_connection_s
        redis_cpu = (
            events * m.redis_cpu_per_event_s
            + connections * m.redis_cpu_per_connection_s
            + max(pubsub - events, 0.0) * m.redis_cpu_per_pubsub_message_s
        )
        row = HourRow(
            hour_utc=start.replace(minute=0),
            connections=connections,
            active_weddings=weddings,
            events_per_s=events,
            deliveries_per_s=deliveries,
            processes=processes,
            processes_policy=need(connections, a.connections_per_process_policy, a.headroom),
            workers_policy=need(deliveries, a.deliveries_per_worker, a.headroom),
            redis_cmds_per_s=redis_cmds,
            redis_cpu=redis_cpu,
            pubsub_messages_per_s=pubsub,
            pg_commits_per_s=events * m.pg_commits_per_event
            + connections * m.pg_commits_per_connection_s,
            pg_wal_mb_per_s=(
                events * m.pg_wal_bytes_per_event + connections * m.pg_wal_bytes_per_connection_s
            )
            / 1e6,
        )
        held = busiest.get(row.hour_utc)
        if held is None or row.connections > held.connections:
            busiest[row.hour_utc] = row
    rows = tuple(busiest[h] for h in sorted(busiest))
    return Model(
        assumptions=a,
        capacity=capacity,
        rows=rows,
        bottleneck=bottleneck(rows, capacity, a, limits) if rows else "nothing: no wedding",
        storm_redis_s=max((r.connections for r in rows), default=0.0) * m.redis_cpu_per_reconnect_s,
    )


def bottleneck(
    rows: Sequence[HourRow], capacity: ProcessCapacity, a: Assumptions, limits: Limits
) -> str:
    """What runs out first at the peak, in words: the fleet against the policy's bound,
    Redis's one core, or else the per-process limit that sizes the fleet."""
    peak = max(rows, key=lambda r: r.connections)
    redis = max(r.redis_cpu for r in rows)
    found = []
    if redis > limits.redis_cpu:
        found.append(
            f"Redis: {redis:.0%} of its one core at the peak (limit {limits.redis_cpu:.0%})"
        )
    if peak.processes_policy > a.max_asgi:
        found.append(
            f"the scaling policy's max_asgi ({a.max_asgi}): the policy's "
            f"{a.connections_per_process_policy:,} connections a process needs "
            f"{peak.processes_policy:,} processes at the peak"
        )
    found.append(
        f"per process, the {capacity.binding} ({capacity.connections:,} connections a "
        f"process): {peak.processes:,} processes at the peak"
    )
    return "; then ".join(found)


def _fmt_hour(row: HourRow) -> str:
    return row.hour_utc.strftime("%a %H:00")


def table(model: Model) -> str:
    """The model as text: the assumptions, the per-process capacity, the hours, the peak."""
    a, c = model.assumptions, model.capacity
    lines = [
        f"{a.weddings:,} weddings on {a.date:%A %Y-%m-%d}; {a.people} people a wedding "
        f"({a.vendors} vendors + {a.couple}), {a.devices_per_person:g} devices a person, "
        f"{a.deliveries_per_connection:g} deliveries/s a connection, headroom "
        f"{a.headroom:.0%}",
        f"connections a process: {c.connections:,} ({c.binding}; CPU {c.by_cpu:,}, memory "
        f"{c.by_memory:,}, reconnect storm {c.by_storm:,}, deliveries {c.by_deliveries:,})",
        "",
    ]
    header = (
        "hour (UTC)",
        "connections",
        "weddings on",
        "events/s",
        "deliveries/s",
        "processes",
        f"at {a.connections_per_process_policy:,}",
        "workers",
        "Redis cmd/s",
        "Redis CPU",
        "pub/sub msg/s",
        "PG commits/s",
        "WAL MB/s",
    )
    body = [
        (
            _fmt_hour(r),
            f"{r.connections:,.0f}",
            f"{r.active_weddings:,.0f}",
            f"{r.events_per_s:,.0f}",
            f"{r.deliveries_per_s:,.0f}",
            f"{r.processes:,}",
            f"{r.processes_policy:,}",
            f"{r.workers_policy:,}",
            f"{r.redis_cmds_per_s:,.0f}",
            f"{r.redis_cpu:.0%}",
            f"{r.pubsub_messages_per_s:,.0f}",
            f"{r.pg_commits_per_s:,.0f}",
            f"{r.pg_wal_mb_per_s:.2f}",
        )
        for r in model.rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    for cells in (header, *body):
        lines.append("  ".join(x.rjust(w) for x, w in zip(cells, widths, strict=True)))
    p = model.peak
    lines += [
        "",
        f"peak: {_fmt_hour(p)} UTC, {p.connections:,.0f} connections, {p.events_per_s:,.0f} "
        f"events/s, {p.deliveries_per_s:,.0f} deliveries/s, {p.processes:,} processes",
        f"bottleneck: {model.bottleneck}",
        f"a reconnect of every client at the peak: at least {model.storm_redis_s:,.0f} s of "
        "Redis's one core (the target is 5 s)",
    ]
    return "\n".join(lines)


def _whole(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError("must be a whole number") from exc
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low:,} to {high:,}")
        return value

    return parse


def _devices(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("must be a number") from exc
    if not 0.1 <= value <= 10:
        raise argparse.ArgumentTypeError("must be 0.1 to 10")
    return value


def _saturday(text: str) -> dt.date:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("must be a date, YYYY-MM-DD") from exc
    if day.weekday() != 5:
        raise argparse.ArgumentTypeError(f"{day} is a {day:%A}, not a Saturday")
    return day


def parser() -> argparse.ArgumentParser:
    """The command line (every value bounded; a bad one is a message, not a traceback)."""
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n")[0])
    d = Assumptions()
    p.add_argument("--weddings", type=_whole(1, MAX_WEDDINGS), default=d.weddings, help="(10000)")
    p.add_argument("--date", type=_saturday, default=d.date, help="a Saturday (2027-09-18)")
    p.add_argument("--vendors", type=_whole(1, 500), default=d.vendors, help="a wedding (20)")
    p.add_argument("--devices", type=_devices, default=d.devices_per_person, help="a person (1.5)")
    p.add_argument(
        "--connections-per-process",
        type=_whole(1, 1_000_000),
        default=d.connections_per_process_policy,
        help="the policy's figure to compare with (1000)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Print the model's table for the command line's assumptions."""
    args = parser().parse_args(argv)
    a = replace(
        Assumptions(),
        weddings=args.weddings,
        date=args.date,
        vendors=args.vendors,
        devices_per_person=args.devices,
        connections_per_process_policy=args.connections_per_process,
    )
    print(table(capacity_model(a)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
