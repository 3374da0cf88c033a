"""Celery tasks of the scaling app: thin, they only call a service."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from scaling.services import scaling_emergency_check, scaling_evaluate
from scaling.warming import cache_warm


@shared_task(name="scaling.tasks.warm_cache", ignore_result=True)
def warm_cache() -> dict[str, Any]:
    """Every 15 min (beat): warm the cache for weddings whose ceremony is near."""
    return cache_warm()


@shared_task(name="scaling.tasks.evaluate_scaling", ignore_result=True)
def evaluate_scaling() -> dict[str, Any] | None:
    """Every minute (beat): decide the capacity, and store/apply/broadcast a change."""
    row = scaling_evaluate()
    if row is None:
        return None
    return {"id": row.pk, "action": row.action, "status": row.actuator_status}


@shared_task(name="scaling.tasks.emergency_check", ignore_result=True)
def emergency_check() -> dict[str, Any] | None:
    """Every SCALING_FAST_INTERVAL seconds (beat): the fast reactive path's check."""
    row = scaling_emergency_check()
    if row is None:
        return None
    return {"id": row.pk, "action": row.action, "status": row.actuator_status}
