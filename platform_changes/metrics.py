"""The change consumer's metrics (docs/integration.md lists the alerts on them)."""

from __future__ import annotations

# settings.py exports PROMETHEUS_MULTIPROC_DIR before any app is imported (core.metrics).
from prometheus_client import Counter, Gauge

OUTCOMES = frozenset({"published", "rejected", "duplicate", "ignored"})

CHANGES = Counter(
    "wedsync_platform_changes",
    "Platform row changes read from the slot, by outcome",
    ["outcome"],
)
RECONNECTS = Counter(
    "wedsync_platform_changes_reconnects", "Times the consumer lost a database and retried"
)
# The WAL the slot keeps on the platform's database: it grows while the consumer is down
# or stuck; alert on it long before max_slot_wal_keep_size drops the slot.
SLOT_LAG = Gauge(
    "wedsync_platform_changes_slot_lag_bytes",
    "WAL the platform database keeps for the change slot",
    multiprocess_mode="livemax",
)


def change(outcome: str) -> None:
    CHANGES.labels(outcome if outcome in OUTCOMES else "other").inc()


def reconnect() -> None:
    RECONNECTS.inc()


def slot_lag(nbytes: int) -> None:
    SLOT_LAG.set(nbytes)
