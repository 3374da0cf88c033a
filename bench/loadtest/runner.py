"""Drives one scenario against a running server and returns its report (a dict).

The coordinator's event loop: ``run_scenario`` hands the scenario's phase (``phases``)
a ``Run``, which samples the server's CPU and RSS from /proc every second and prints a
progress line every two. Data is seeded before the loop starts (``seeding``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .hostile import hostile_member
from .overload import overload
from .phases import (
    connections_max,
    fanout_max,
    reconnect_storm,
    saturday_peak,
    snapshot_read,
)
from .procstat import ProcSampler
from .scenarios import (
    ConnectionsMax,
    FanoutMax,
    HostileMember,
    Overload,
    ReconnectStorm,
    SaturdayPeak,
    Scenario,
    SnapshotRead,
)
from .seeding import WeddingLogins
from .worker import loop_name

PROGRESS_EVERY_S = 2.0
SAMPLE_EVERY_S = 1.0

Say = Callable[[str], None]


@dataclass
class Target:
    """The server under test as the runner sees it."""

    ws_url: str
    host: str
    port: int
    server: dict[str, Any]  # kind, channel layer, database, pids ... (for the report)
    sampler: ProcSampler | None = None
    # Loopback addresses the receivers connect from, in turn (empty: the system's choice).
    # One address reaches one server port from ~28,000 ephemeral ports at most.
    source_addresses: tuple[str, ...] = ()


@dataclass
class Run:
    """The shared state of one run: timing, sampling and progress lines."""

    target: Target
    say: Say
    started: float = field(default_factory=time.monotonic)
    status: Callable[[], str] = lambda: ""
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def mark(self) -> float:
        """Sample the server now and return the monotonic time of the sample."""
        if self.target.sampler is not None:
            self.target.sampler.sample()
        return time.monotonic()

    def usage(self, start: float, end: float) -> dict[str, Any]:
        if self.target.sampler is None:
            return {"cpu_percent": None, "rss_max_mib": None, "rss_end_mib": None}
        return self.target.sampler.window(start, end)

    def rss_mib(self) -> float | None:
        sampler = self.target.sampler
        sample = sampler.sample() if sampler is not None else None
        return round(sample.rss / 2**20, 1) if sample else None

    def start_background(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sample()), loop.create_task(self._progress())]

    async def stop_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sample(self) -> None:
        while True:
            self.mark()
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def _progress(self) -> None:
        last_cpu: tuple[float, float] | None = None
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            line = f"[{time.monotonic() - self.started:6.1f}s] {self.status()}"
            sampler = self.target.sampler
            if sampler is not None and sampler.samples:
                now = sampler.samples[-1]
                if last_cpu is not None and now.at > last_cpu[0]:
                    cpu = 100 * (now.cpu_s - last_cpu[1]) / (now.at - last_cpu[0])
                    line += f" | server cpu {cpu:.0f}%"
                line += f" rss {now.rss / 2**20:.0f} MiB"
                last_cpu = (now.at, now.cpu_s)
            self.say(line)


RUNNERS: dict[type[Scenario], Callable[..., Any]] = {
    SaturdayPeak: saturday_peak,
    FanoutMax: fanout_max,
    ConnectionsMax: connections_max,
    ReconnectStorm: reconnect_storm,
    SnapshotRead: snapshot_read,
    HostileMember: hostile_member,
    Overload: overload,
}


def weddings_needed(scenario: Scenario) -> tuple[int, int]:
    """(weddings, suppliers per wedding) to seed for a scenario."""
    if isinstance(scenario, SnapshotRead):
        return scenario.weddings, max(2, -(-scenario.clients // scenario.weddings))
    per = scenario.per_wedding  # type: ignore[attr-defined]
    return scenario.weddings, per  # type: ignore[attr-defined]


async def run_scenario(
    scenario: Scenario, world: list[WeddingLogins], target: Target, say: Say
) -> dict[str, Any]:
    """Run one scenario; the returned dict is the run's report minus its header."""
    random.seed()
    run = Run(target, say)
    started = time.monotonic()
    result = await RUNNERS[type(scenario)](scenario, world, run)
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    result["coordinator_loop"] = loop_name(asyncio.get_running_loop())
    return result
