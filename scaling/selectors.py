"""Reads of wedding-day operations: the current wedding-day mode, through the cache."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from scaling.models import WeddingDayModeChange
from wedsync.cache import get_cache
from wedsync.selectors import switch_state

CACHE_KEY = "wedding_day_mode"


def wedding_day_mode_load() -> dict[str, Any]:
    """The current mode from the database: the latest change, or off when there is none."""
    return switch_state(
        WeddingDayModeChange.objects.select_related("changed_by")
        .order_by("-changed_at", "-id")
        .first()
    )


def wedding_day_mode() -> dict[str, Any]:
    """``{"enabled", "reason", "changed_by", "changed_at"}``: read on hot paths, so cached."""
    return get_cache().get_or_load(CACHE_KEY, wedding_day_mode_load)


def wedding_day_mode_invalidate() -> None:
    """Drop the cached mode now and once more after the current commit."""
    cache = get_cache()
    cache.delete(CACHE_KEY)
    transaction.on_commit(lambda: cache.delete(CACHE_KEY))
