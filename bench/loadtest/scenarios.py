"""The scenarios of the load benchmark and their parameters, validated with clear errors.

Each scenario is a frozen dataclass; every numeric field carries its bounds and the
command-line option that sets it, so an out-of-range value fails before anything is
seeded or started, with a message naming the option (``ScenarioError``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

# A publisher connection sends at most this many publishes a second: half the server's
# default limit (REALTIME_PUBLISH_RATE 20/s, burst 40), so that scheduling jitter on a
# loaded generator never trips ``rate_limited``. More load means more publisher
# connections, not a raised server limit: the figures are of the default configuration.
PUBLISHER_MAX_RATE = 10.0
# Generator-side bound; the server's own connection limits are what is measured.
MAX_CONNECTIONS = 60_000


class ScenarioError(ValueError):
    """Parameters a scenario refuses; the message names the option to fix."""


def _param(default: Any, low: float, high: float, option: str, help: str) -> Any:
    return field(
        default=default, metadata={"low": low, "high": high, "option": option, "help": help}
    )


@dataclass(frozen=True)
class Scenario:
    """Parameters every scenario shares."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    processes: int = _param(1, 1, 32, "--processes", "generator processes for the receivers")

    def __post_init__(self) -> None:
        for f in fields(self):
            meta = f.metadata
            if "low" not in meta:
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ScenarioError(f"{meta['option']} must be a number, not {value!r}")
            if isinstance(f.default, int) and not isinstance(value, int):
                raise ScenarioError(f"{meta['option']} must be a whole number, not {value!r}")
            if not (meta["low"] <= value <= meta["high"]) or math.isnan(value):
                raise ScenarioError(
                    f"{meta['option']} must be between {meta['low']:g} and {meta['high']:g}, "
                    f"not {value:g}"
                )
        self.check()

    def check(self) -> None:
        """Checks across fields; raise ScenarioError."""

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}


def weddings_for(connections: int, per_wedding: int) -> int:
    """Weddings needed for ``connections`` receivers, ``per_wedding`` on each."""
    return math.ceil(connections / per_wedding)


def publishers_per_wedding(rate: float, weddings: int) -> int:
    """Publisher connections per wedding so that none exceeds PUBLISHER_MAX_RATE."""
    return max(1, math.ceil(rate / weddings / PUBLISHER_MAX_RATE))


@dataclass(frozen=True)
class SaturdayPeak(Scenario):
    name: ClassVar[str] = "saturday-peak"
    summary: ClassVar[str] = "1,000 connections (25 weddings x 40), 50 publishes/s in total, 60 s"

    connections: int = _param(1000, 1, MAX_CONNECTIONS, "--connections", "receivers")
    per_wedding: int = _param(40, 1, 500, "--per-wedding", "receivers per wedding")
    rate: float = _param(50.0, 0.1, 5000, "--rate", "publishes/s in total")
    duration: float = _param(60.0, 1, 3600, "--duration", "seconds of publishing")
    drain_timeout: float = _param(
        15.0, 1, 600, "--drain-timeout", "seconds to wait for the last deliveries"
    )

    @property
    def weddings(self) -> int:
        return weddings_for(self.connections, self.per_wedding)

    def check(self) -> None:
        if self.rate * self.duration < 1:
            raise ScenarioError(
                f"--rate {self.rate:g} for --duration {self.duration:g} s publishes nothing"
            )


@dataclass(frozen=True)
class FanoutMax(Scenario):
    name: ClassVar[str] = "fanout-max"
    summary: ClassVar[str] = (
        "40 receivers per wedding; the publish rate steps up until p99 > 100 ms or loss"
    )

    weddings: int = _param(25, 1, 500, "--weddings", "weddings (topics)")
    per_wedding: int = _param(40, 1, 500, "--per-wedding", "receivers per wedding")
    start_rate: float = _param(50.0, 0.1, 10_000, "--start-rate", "publishes/s of step 1")
    step_rate: float = _param(50.0, 0.1, 10_000, "--step-rate", "publishes/s added per step")
    max_rate: float = _param(2000.0, 0.1, 10_000, "--max-rate", "stop after this rate")
    step_duration: float = _param(10.0, 1, 600, "--step-duration", "seconds per step")
    p99_limit_ms: float = _param(100.0, 1, 60_000, "--p99-limit", "a step passes below (ms)")
    drain_timeout: float = _param(
        10.0, 1, 600, "--drain-timeout", "seconds to wait for a step's last deliveries"
    )

    def check(self) -> None:
        if self.weddings * self.per_wedding > MAX_CONNECTIONS:
            raise ScenarioError(
                f"--weddings x --per-wedding is {self.weddings * self.per_wedding} receivers; "
                f"at most {MAX_CONNECTIONS}"
            )
        if self.max_rate < self.start_rate:
            raise ScenarioError(
                f"--max-rate ({self.max_rate:g}) is below --start-rate ({self.start_rate:g})"
            )

    def rates(self) -> list[float]:
        """The publish rate of each step, start_rate up to max_rate."""
        steps = math.floor((self.max_rate - self.start_rate) / self.step_rate + 1e-9) + 1
        return [round(self.start_rate + i * self.step_rate, 6) for i in range(steps)]


def _levels(raw: tuple[int, ...] | str) -> tuple[int, ...]:
    if isinstance(raw, str):
        try:
            raw = tuple(int(part) for part in raw.split(",") if part.strip())
        except ValueError:
            raise ScenarioError(
                f"--levels must be whole numbers separated by commas, not {raw!r}"
            ) from None
    return tuple(raw)


@dataclass(frozen=True)
class ConnectionsMax(Scenario):
    name: ClassVar[str] = "connections-max"
    summary: ClassVar[str] = (
        "idle connections at 1k/5k/10k: server RSS, memory per connection, connect rate"
    )

    levels: tuple[int, ...] = (1000, 5000, 10_000)
    per_wedding: int = _param(40, 1, 500, "--per-wedding", "connections per wedding")
    concurrency: int = _param(100, 1, 5000, "--concurrency", "handshakes in flight")
    settle: float = _param(5.0, 0, 600, "--settle", "seconds idle before each RSS reading")
    hold: float = _param(
        0.0, 0, 3600, "--hold", "seconds the last level is held, RSS every 30 s (0: none)"
    )
    subscribe: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", _levels(self.levels))
        super().__post_init__()

    def check(self) -> None:
        levels = self.levels
        if not levels:
            raise ScenarioError("--levels needs at least one number of connections")
        if any(n < 1 for n in levels) or list(levels) != sorted(set(levels)):
            raise ScenarioError(f"--levels must rise strictly from 1, not {levels}")
        if levels[-1] > MAX_CONNECTIONS:
            raise ScenarioError(f"--levels goes up to {MAX_CONNECTIONS}, not {levels[-1]}")

    @property
    def weddings(self) -> int:
        return weddings_for(self.levels[-1], self.per_wedding)


@dataclass(frozen=True)
class ReconnectStorm(Scenario):
    name: ClassVar[str] = "reconnect-storm"
    summary: ClassVar[str] = (
        "1,000 subscribed clients drop at once while publishing goes on; they reconnect with since"
    )

    connections: int = _param(1000, 1, MAX_CONNECTIONS, "--connections", "receivers")
    per_wedding: int = _param(40, 1, 500, "--per-wedding", "receivers per wedding")
    rate: float = _param(50.0, 0.1, 5000, "--rate", "publishes/s in total")
    before: float = _param(10.0, 1, 600, "--before", "seconds of publishing before the drop")
    after: float = _param(20.0, 1, 600, "--after", "seconds of publishing after the drop")
    recovery_timeout: float = _param(
        60.0, 1, 600, "--recovery-timeout", "seconds the clients get to catch up"
    )
    drain_timeout: float = _param(
        15.0, 1, 600, "--drain-timeout", "seconds to wait for the last deliveries"
    )

    @property
    def weddings(self) -> int:
        return weddings_for(self.connections, self.per_wedding)


@dataclass(frozen=True)
class SnapshotRead(Scenario):
    name: ClassVar[str] = "snapshot-read"
    summary: ClassVar[str] = (
        "GET /api/weddings/<id>/ at a fixed rate from 50 concurrent HTTP clients"
    )

    clients: int = _param(50, 1, 1000, "--clients", "concurrent keep-alive HTTP clients")
    rate: float = _param(200.0, 0.1, 20_000, "--rate", "requests/s in total")
    duration: float = _param(30.0, 1, 3600, "--duration", "seconds of requests")
    weddings: int = _param(25, 1, 1000, "--weddings", "weddings read")

    def check(self) -> None:
        if self.rate * self.duration < 1:
            raise ScenarioError(
                f"--rate {self.rate:g} for --duration {self.duration:g} s sends nothing"
            )
        if self.processes != 1:
            raise ScenarioError("snapshot-read runs in one process: leave --processes out")


# What the flooder of hostile-member may send (``flooder``): WebSocket frames and HTTP
# requests. A replay is a subscribe with since=0 and its unsubscribe.
FLOOD_WS_KINDS = ("message", "emergency", "replay", "presence", "ack", "ping")
FLOOD_HTTP_KINDS = ("http_message", "http_emergency", "http_history", "http_snapshot", "http_token")


def _kinds(raw: tuple[str, ...] | str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = tuple(part.strip() for part in raw.split(",") if part.strip())
    known = FLOOD_WS_KINDS + FLOOD_HTTP_KINDS
    unknown = [kind for kind in raw if kind not in known]
    if unknown:
        raise ScenarioError(
            f"--flood-kinds: unknown {unknown[0]!r}; choose from {', '.join(known)}"
        )
    if not raw:
        raise ScenarioError("--flood-kinds needs at least one kind")
    return tuple(kind for kind in known if kind in raw)  # in the flooder's order


# saturday-peak's publish rate per wedding (50/s over 25 weddings): hostile-member's planner.
PEAK_RATE_PER_WEDDING = 2.0
# The server's default connection limit per user (REALTIME_MAX_CONNECTIONS_PER_USER).
USER_CONNECTION_LIMIT = 20


@dataclass(frozen=True)
class HostileMember(Scenario):
    name: ClassVar[str] = "hostile-member"
    summary: ClassVar[str] = (
        "one booked vendor floods every frame kind and the HTTP API for 60 s while 40"
        " members of its wedding receive the planner's traffic"
    )

    members: int = _param(40, 1, 400, "--members", "receiving members of the wedding")
    rate: float = _param(
        PEAK_RATE_PER_WEDDING, 0.1, PUBLISHER_MAX_RATE, "--rate", "the planner's publishes/s"
    )
    duration: float = _param(60.0, 1, 3600, "--duration", "seconds of flooding and publishing")
    flood_connections: int = _param(
        USER_CONNECTION_LIMIT, 0, 200, "--flood-connections", "the flooder's WebSocket connections"
    )
    flood_http: int = _param(4, 0, 100, "--flood-http", "the flooder's HTTP keep-alive clients")
    flood_kinds: tuple[str, ...] = FLOOD_WS_KINDS + FLOOD_HTTP_KINDS
    prune_at: int = _param(
        0, 0, 10_000_000, "--prune-at",
        "after the checks, prune again as if REALTIME_RETENTION_EVENTS were this (0: no);"
        " it prunes every topic of the database: a scratch database only",
    )  # fmt: skip
    drain_timeout: float = _param(
        15.0, 1, 600, "--drain-timeout", "seconds to wait for the last deliveries"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "flood_kinds", _kinds(self.flood_kinds))
        super().__post_init__()

    @property
    def weddings(self) -> int:
        return 1

    @property
    def per_wedding(self) -> int:
        """Suppliers to seed: the members (the planner first) and the flooder."""
        return self.members + 1

    def check(self) -> None:
        if self.rate * self.duration < 1:
            raise ScenarioError(
                f"--rate {self.rate:g} for --duration {self.duration:g} s publishes nothing"
            )
        if self.processes > self.members:
            raise ScenarioError(
                f"--processes ({self.processes}) is more than --members ({self.members})"
            )


@dataclass(frozen=True)
class Overload(Scenario):
    name: ClassVar[str] = "overload"
    summary: ClassVar[str] = (
        "one process at 1.5x its measured capacity: emergencies, timeline changes and"
        " messages, p99 per priority class (run again with REALTIME_PRIORITY=false)"
    )

    weddings: int = _param(50, 1, 500, "--weddings", "weddings (topics)")
    per_wedding: int = _param(
        8, 4, 200, "--per-wedding", "vendors per wedding: the planner, members, an observer"
    )
    calibrate: float = _param(5.0, 0.5, 600, "--calibrate", "seconds measuring the capacity")
    factor: float = _param(1.5, 0.1, 20, "--factor", "the offered rate, x the capacity")
    rate: float = _param(
        0.0, 0, 10_000, "--rate", "offered publishes/s instead (0: --factor x the capacity)"
    )
    duration: float = _param(20.0, 1, 3600, "--duration", "seconds of overload")
    drain_timeout: float = _param(
        30.0, 1, 600, "--drain-timeout", "seconds to wait for the last deliveries"
    )

    @property
    def receivers(self) -> int:
        """Receivers of each wedding besides the observer: one per vendor."""
        return self.per_wedding

    def check(self) -> None:
        if self.processes > self.weddings * self.per_wedding:
            raise ScenarioError(
                f"--processes ({self.processes}) is more than the receivers"
                f" ({self.weddings * self.per_wedding})"
            )


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (
        SaturdayPeak, FanoutMax, ConnectionsMax, ReconnectStorm, SnapshotRead, HostileMember,
        Overload,
    )
}  # fmt: skip


def scenario_from_options(name: str, options: dict[str, Any]) -> Scenario:
    """Build a scenario from option values (None: the scenario's default)."""
    cls = SCENARIOS.get(name)
    if cls is None:
        raise ScenarioError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in options.items() if k in names and v is not None}
    return cls(**given)
