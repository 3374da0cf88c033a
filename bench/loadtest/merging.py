"""Sums of the worker processes' results: connection attempts, delivery totals and the
receivers' counters, as the report's figures."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .accounting import DeliveryTotals, Latencies


def merge_open(stats: list[Any]) -> dict[str, Any]:
    """Connection attempts of all workers, summed (seconds: the slowest worker)."""
    connect_ms = Latencies()
    failures: Counter = Counter()
    for s in stats:
        connect_ms.extend(s.connect_ms)
        failures.update(s.failures)
    attempted = sum(s.attempted for s in stats)
    succeeded = sum(s.succeeded for s in stats)
    seconds = max((s.seconds for s in stats), default=0.0)
    summary = connect_ms.summary()
    return {
        "attempted": attempted,
        "succeeded": succeeded,
        "failures": dict(failures),
        "seconds": round(seconds, 3),
        "rate_per_s": round(succeeded / seconds, 1) if seconds else None,
        "connect_p50_ms": summary["p50_ms"],
        "connect_p99_ms": summary["p99_ms"],
    }


def merge_totals(results: list[tuple[DeliveryTotals, float]]) -> tuple[DeliveryTotals, float]:
    totals = DeliveryTotals()
    for part, _ in results:
        totals.merge(part)
    return totals, max((drain for _, drain in results), default=0.0)


def merge_counters(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"reconnects": 0, "resets": 0, "strays": 0}
    closes: Counter = Counter()
    errors: Counter = Counter()
    hosts: Counter = Counter()
    for part in parts:
        for key in ("reconnects", "resets", "strays"):
            out[key] += part.get(key, 0)
        closes.update(part.get("closes", {}))
        errors.update(part.get("errors", {}))
        hosts.update(part.get("source_hosts", {}))
    out["server_closes"] = {str(k): v for k, v in closes.items()}
    out["errors"] = dict(errors)
    out["source_hosts"] = dict(sorted(hosts.items()))  # connections opened from each address
    out["loop"] = parts[0]["loop"] if parts else None
    return out


def deliveries(totals: DeliveryTotals, seconds: float) -> dict[str, Any]:
    out = totals.as_dict()
    out["per_s"] = round(totals.received / seconds, 1) if seconds > 0 else None
    return out
