"""Wedding-day operations state: the wedding-day mode switch and its audit log.

Wedding-day mode marks the hours when weddings are live (stricter operations: no
deploys, scaled-up capacity). Every change is a new ``WeddingDayModeChange`` row, never
edited nor deleted, so the log says who switched it, when and why; the current mode is
the latest row (off when there is none). Written by ``scaling.services``, read by
``scaling.selectors``.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinLengthValidator
from django.db import models

REASON_MAX_LENGTH = 500


class WeddingDayModeChange(models.Model):
    """One switch of wedding-day mode on or off (an append-only audit log)."""

    enabled = models.BooleanField()
    reason = models.CharField(max_length=REASON_MAX_LENGTH, validators=[MinLengthValidator(1)])
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,  # the log outlives the account
        related_name="+",
    )
    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-changed_at", "-id")
        get_latest_by = ("changed_at", "id")
        verbose_name = "wedding-day mode change"

    def __str__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"wedding-day mode {state} at {self.changed_at:%Y-%m-%d %H:%M}"
