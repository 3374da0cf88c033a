"""Writes of wedding-day operations: switching wedding-day mode."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from scaling.models import REASON_MAX_LENGTH, WeddingDayModeChange
from scaling.selectors import wedding_day_mode_invalidate
from wedsync.services import switch_reason_clean


def wedding_day_mode_set(*, enabled: bool, reason: str, user: Any) -> WeddingDayModeChange:
    """Switch wedding-day mode on or off, recording who did it and why.

    ``reason`` is required (1 to 500 characters, not blank); ``user`` may be None for
    an automated change. The cached mode is dropped after commit. Raises
    ``ValidationError`` naming the field; nothing is stored then.
    """
    reason = switch_reason_clean(enabled, reason, REASON_MAX_LENGTH)
    changed_by = user if user is not None and getattr(user, "pk", None) else None
    with transaction.atomic():
        change = WeddingDayModeChange.objects.create(
            enabled=enabled, reason=reason, changed_by=changed_by
        )
        wedding_day_mode_invalidate()
    return change
