"""Celery tasks of the scaling app: thin, they only call a service."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from scaling.warming import cache_warm


@shared_task(name="scaling.tasks.warm_cache", ignore_result=True)
def warm_cache() -> dict[str, Any]:
    """Every 15 min (beat): warm the cache for weddings whose ceremony is near."""
    return cache_warm()
