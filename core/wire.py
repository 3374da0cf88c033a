"""Formats the wire shares across apps (PROTOCOL §1)."""

from __future__ import annotations

import datetime as dt


def wire_time(value: dt.datetime) -> str:
    """A time as the wire carries it: ISO-8601 UTC with milliseconds and "Z"."""
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
