"""CPU and memory of the server processes, read from /proc (Linux only).

``ProcSampler`` reads the summed CPU time (user + system) and resident set size of a
set of PIDs, fixed or looked up again at each sample (the workers of
``wedsync.serve --workers N``, one of which may be replaced during a run);
``server_pids`` finds the processes of a server listening on a TCP port, for a server
the benchmark did not start itself (``--url``). Elsewhere than Linux every read returns
None and the report says "n/a".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Sample:
    """One reading: monotonic time, CPU seconds so far, resident bytes now."""

    at: float
    cpu_s: float
    rss: int


def read_cpu_rss(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of one process, or None when it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        statm = (PROC / str(pid) / "statm").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces, so split after the last ")".
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return cpu, int(statm.split()[1]) * _PAGE


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (uvicorn --workers, a reloader ...)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def listening_pids(port: int) -> list[int]:
    """The processes with a TCP socket listening on ``port`` (any address)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return []
    pids = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    pids.append(int(entry.name))
                    break
            except OSError:  # closed since the listing
                continue
    return sorted(pids)


def _command_line(pid: int) -> bytes:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def _parent(pid: int) -> int | None:
    try:
        return int((PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def server_pids(port: int) -> list[int]:
    """Every process of the server listening on ``port``: each listener with what runs
    below it, and the ``wedsync.serve`` supervisor above its workers (each worker of
    ``--workers N`` listens on a socket of its own, so every one of them is found)."""
    found = {p for pid in listening_pids(port) for p in descendants(pid)}
    for pid in list(found):
        parent = _parent(pid)
        if parent and parent not in found and b"wedsync.serve" in _command_line(parent):
            found.update(descendants(parent))
    return sorted(found)


class ProcSampler:
    """Summed CPU time and RSS of some processes, sampled on demand.

    ``pids`` is a list, or a function called at each sample for the PIDs of that moment
    (a started server's process tree: a worker that died and its replacement both count).
    The CPU seconds add up what each PID used since the previous sample, so a process
    that ends between two samples does not take its past CPU time out of the sum.
    """

    def __init__(self, pids: list[int] | Callable[[], list[int]]) -> None:
        self._find = pids if callable(pids) else None
        self.pids = [] if callable(pids) else list(pids)
        self.samples: list[Sample] = []
        self._cpu_total = 0.0
        self._cpu_last: dict[int, float] = {}

    def sample(self) -> Sample | None:
        """Read every PID now and keep the reading; None when none could be read."""
        if self._find is not None:
            self.pids = list(self._find())
        rss, seen, cpu_now = 0, False, {}
        for pid in self.pids:
            reading = read_cpu_rss(pid)
            if reading is not None:
                cpu_now[pid] = reading[0]
                rss, seen = rss + reading[1], True
        if not seen:
            return None
        # A PID first seen counts from its start: its CPU so far was spent serving too.
        self._cpu_total += sum(
            max(0.0, cpu - self._cpu_last.get(pid, 0.0)) for pid, cpu in cpu_now.items()
        )
        self._cpu_last = cpu_now
        sample = Sample(time.monotonic(), self._cpu_total, rss)
        self.samples.append(sample)
        return sample

    def window(self, start: float, end: float) -> dict[str, float | None]:
        """CPU % (of one core) and RSS (max and last, MiB) between two monotonic times."""
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2:
            return {"cpu_percent": None, "rss_max_mib": None, "rss_end_mib": None}
        first, last = inside[0], inside[-1]
        elapsed = last.at - first.at
        return {
            "cpu_percent": round(100 * (last.cpu_s - first.cpu_s) / elapsed, 1)
            if elapsed > 0
            else None,
            "rss_max_mib": round(max(s.rss for s in inside) / 2**20, 1),
            "rss_end_mib": round(last.rss / 2**20, 1),
        }
