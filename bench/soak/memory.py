"""The server's memory over the soak: RSS of every server process, and the growth bound.

Every ``--sample-every`` seconds the RSS of the supervisor and of each worker is read from
/proc (``procstat.read_cpu_rss``) and kept per PID: a worker killed by the soak ends its
series and its replacement starts one. A process is judged from its *baseline*, its first
sample at least ``warmup`` seconds into its life (connections opened, caches and pools
filled, allocator arenas grown), to its last sample: growth must stay within
``max(pct % of the baseline, floor MiB)`` (``--rss-bound-pct`` 25, ``--rss-bound-mib``
40). A process that did not live ``warmup`` + two samples is not judged (said so).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bench.loadtest.procstat import read_cpu_rss

MIB = 2**20


@dataclass
class Series:
    pid: int
    role: str  # "supervisor" or "worker"
    samples: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, bytes)


class RssTracker:
    """RSS samples per server PID."""

    def __init__(self) -> None:
        self.series: dict[int, Series] = {}

    def sample(self, supervisor: int, workers: list[int]) -> dict[int, float]:
        """Read every process now; {pid: MiB} of those read."""
        now = time.monotonic()
        read: dict[int, float] = {}
        for pid in [supervisor, *workers]:
            reading = read_cpu_rss(pid)
            if reading is None or reading[1] == 0:  # gone, or a zombie not yet reaped
                continue
            role = "supervisor" if pid == supervisor else "worker"
            self.series.setdefault(pid, Series(pid, role)).samples.append((now, reading[1]))
            read[pid] = round(reading[1] / MIB, 1)
        return read

    def verdict(self, warmup: float, pct: float, floor_mib: float) -> list[dict[str, Any]]:
        """One row per process: baseline, end, growth, bound and whether it held."""
        rows = []
        for series in self.series.values():
            samples = series.samples
            first = samples[0][0]
            settled = [s for s in samples if s[0] - first >= warmup]
            row: dict[str, Any] = {
                "pid": series.pid,
                "role": series.role,
                "samples": len(samples),
                "lived_s": round(samples[-1][0] - first, 1),
                "peak_mib": round(max(s[1] for s in samples) / MIB, 1),
            }
            if len(settled) < 2:
                why = f"lived less than the warm-up ({warmup:g} s) + 2 samples"
                rows.append({**row, "judged": False, "within": None, "why": why})
                continue
            base, end = settled[0][1], settled[-1][1]
            bound = max(base * pct / 100, floor_mib * MIB)
            rows.append({
                **row,
                "judged": True,
                "baseline_mib": round(base / MIB, 1),
                "end_mib": round(end / MIB, 1),
                "growth_mib": round((end - base) / MIB, 1),
                "growth_pct": round(100 * (end - base) / base, 1),
                "bound_mib": round(bound / MIB, 1),
                "within": end - base <= bound,
            })  # fmt: skip
        return rows
