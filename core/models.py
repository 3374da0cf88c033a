"""Abstract models any app may build on: the audited on/off switch's change log."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinLengthValidator
from django.db import models

SWITCH_REASON_MAX_LENGTH = 500


class SwitchChange(models.Model):
    """One change of an audited on/off switch (wedding-day mode, read-only mode): rows are
    appended, never edited nor deleted; the switch's state is its latest row (off when
    there is none), so the log says who switched it, when and why."""

    # What the switch is called in ``str()``, e.g. "wedding-day mode".
    switch_name = "switch"

    enabled = models.BooleanField()
    reason = models.CharField(
        max_length=SWITCH_REASON_MAX_LENGTH, validators=[MinLengthValidator(1)]
    )
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,  # the log outlives the account
        related_name="+",
    )
    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        abstract = True
        ordering = ("-changed_at", "-id")
        get_latest_by = ("changed_at", "id")

    def __str__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"{self.switch_name} {state} at {self.changed_at:%Y-%m-%d %H:%M}"
