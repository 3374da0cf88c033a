"""Where scaling reads the load that was measured: the metric history the demand model
learns from and the latest reading a decision starts from.

Monitoring measures (it records a snapshot a minute) and plugs its reader in here in
``MonitoringConfig.ready``, so scaling never imports monitoring (monitoring observes;
nothing imports it). Without a reader there are no readings: decisions then come from the
wedding calendar alone, as they do when the snapshots have stopped.

The fast reading (issue #18) is plugged the same way (``set_fast_reader``): the server
processes' figures now, for the emergency check every ``SCALING_FAST_INTERVAL`` seconds.
Without a fast reader the emergency check reads nothing and decides nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from scaling.decisions import CurrentMetrics
from scaling.demand import Observation
from scaling.emergency import FastReading


class Reader(Protocol):
    def history(self, start: dt.datetime, end: dt.datetime) -> list[Observation]:
        """The readings taken in [start, end], oldest first."""
        ...

    def latest(
        self, *, now: dt.datetime, max_age: dt.timedelta
    ) -> tuple[CurrentMetrics, dt.datetime] | None:
        """The latest reading taken in [now - max_age, now] and when; None when none."""
        ...


class FastReader(Protocol):
    def __call__(self) -> FastReading | None:
        """The server processes' figures now; None when they cannot be read."""
        ...


_reader: Reader | None = None
_fast_reader: FastReader | None = None


def set_reader(reader: Reader | None) -> None:
    """Read the measured load from ``reader`` (monitoring's, in its ``ready()``)."""
    global _reader
    _reader = reader


def history(start: dt.datetime, end: dt.datetime) -> list[Observation]:
    return [] if _reader is None else _reader.history(start, end)


def latest(*, now: dt.datetime, max_age: dt.timedelta) -> tuple[CurrentMetrics, dt.datetime] | None:
    return None if _reader is None else _reader.latest(now=now, max_age=max_age)


def set_fast_reader(reader: FastReader | None) -> None:
    """Read the live figures from ``reader`` (monitoring's, in its ``ready()``)."""
    global _fast_reader
    _fast_reader = reader


def fast() -> FastReading | None:
    """The fast reading now (the emergency check's input); None without a reader."""
    return None if _fast_reader is None else _fast_reader()
