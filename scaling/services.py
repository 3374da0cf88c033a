"""Writes of wedding-day operations: switching wedding-day mode."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from scaling.models import REASON_MAX_LENGTH, WeddingDayModeChange
from scaling.selectors import wedding_day_mode_invalidate


def wedding_day_mode_set(*, enabled: bool, reason: str, user: Any) -> WeddingDayModeChange:
    """Switch wedding-day mode on or off, recording who did it and why.

    ``reason`` is required (1 to 500 characters, not blank); ``user`` may be None for
    an automated change. The cached mode is dropped after commit. Raises
    ``ValidationError`` naming the field; nothing is stored then.
    """
    if not isinstance(enabled, bool):
        raise ValidationError({"enabled": "must be true or false"})
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError({"reason": "a reason is required"})
    reason = reason.strip()
    if len(reason) > REASON_MAX_LENGTH:
        raise ValidationError({"reason": f"at most {REASON_MAX_LENGTH} characters"})
    changed_by = user if user is not None and getattr(user, "pk", None) else None
    with transaction.atomic():
        change = WeddingDayModeChange.objects.create(
            enabled=enabled, reason=reason, changed_by=changed_by
        )
        wedding_day_mode_invalidate()
    return change
