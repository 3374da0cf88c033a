"""Wedding-day operations state: the wedding-day mode switch and its audit log.

``ScalingDecision`` is the audit log of the scaling evaluation (``scaling.services.
scaling_evaluate``): one row per decision that changed the desired capacity or carried a
new 24-hour notice, with its inputs, its reason in words and what the actuator did.
``CapacityReservation`` is the capacity the evaluation reserves a day ahead for a
forecast peak (ADR 0033).

Wedding-day mode marks the hours when weddings are live (stricter operations: no
deploys, scaled-up capacity). Every change is a new ``WeddingDayModeChange`` row, never
edited nor deleted, so the log says who switched it, when and why; the current mode is
the latest row (off when there is none). Written by ``scaling.services``, read by
``scaling.selectors``.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from core.models import SWITCH_REASON_MAX_LENGTH, SwitchChange

REASON_MAX_LENGTH = SWITCH_REASON_MAX_LENGTH


class WeddingDayModeChange(SwitchChange):
    """One switch of wedding-day mode on or off (an append-only audit log)."""

    switch_name = "wedding-day mode"

    class Meta(SwitchChange.Meta):
        verbose_name = "wedding-day mode change"


class ScalingDecision(models.Model):
    """One scaling decision: the desired capacity, what it was before, why, on which
    inputs, and what the actuator made of it (an append-only audit log)."""

    class Action(models.TextChoices):
        SCALE_OUT = "scale_out", "Scale out"
        SCALE_IN = "scale_in", "Scale in"
        HOLD = "hold", "Hold"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"  # stored, the actuator not yet back
        APPLIED = "applied", "Applied"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"  # nothing to apply (a notice only)

    made_at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=10, choices=Action.choices)
    asgi_processes = models.PositiveIntegerField()
    celery_workers = models.PositiveIntegerField()
    connection_limit = models.PositiveIntegerField()
    previous_asgi_processes = models.PositiveIntegerField()
    previous_celery_workers = models.PositiveIntegerField()
    previous_connection_limit = models.PositiveIntegerField()
    reason = models.TextField()
    inputs = models.JSONField(default=dict)
    # The forecast peak a 24-hour notice was posted for (so it is posted once per peak).
    notice_peak_at = models.DateTimeField(null=True, blank=True, db_index=True)
    actuator = models.CharField(max_length=20)
    actuator_status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING
    )
    actuator_returncode = models.IntegerField(null=True, blank=True)
    actuator_output = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("-made_at", "-id")
        get_latest_by = ("made_at", "id")
        verbose_name = "scaling decision"

    def __str__(self) -> str:
        return (
            f"{self.action} to {self.asgi_processes} ASGI / {self.celery_workers} workers "
            f"at {self.made_at:%Y-%m-%d %H:%M}"
        )


class CapacityReservation(models.Model):
    """Capacity reserved a day ahead for one forecast peak (ADR 0033): at least
    ``asgi_processes`` and ``celery_workers`` from ``starts_at`` (the peak less the
    reservation lead) until ``ends_at`` (the end of the windows of the weddings that make
    the peak). Written by ``scaling.services.scaling_evaluate`` only: planned when the
    forecast first shows the peak, updated (never duplicated) while it moves, active from
    its start (the evaluation's minimums), released after its end, cancelled when the peak
    leaves the forecast."""

    class Status(models.TextChoices):
        PLANNED = "planned", "Planned"
        ACTIVE = "active", "Active"
        RELEASED = "released", "Released"
        CANCELLED = "cancelled", "Cancelled"

    OPEN = (Status.PLANNED, Status.ACTIVE)

    peak_at = models.DateTimeField(db_index=True)
    connections = models.FloatField(help_text="connections forecast at the peak")
    asgi_processes = models.PositiveIntegerField()
    celery_workers = models.PositiveIntegerField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PLANNED, db_index=True
    )
    made_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # When the forecast it was last planned from was made, and what it saw of the peak.
    forecast_made_at = models.DateTimeField()
    weddings = models.JSONField(default=list, help_text="ids of the weddings in the peak")
    # When it became active, and when it was released or cancelled, and why.
    activated_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("starts_at", "id")
        verbose_name = "capacity reservation"

    def __str__(self) -> str:
        return (
            f"{self.status}: {self.asgi_processes} ASGI / {self.celery_workers} workers "
            f"for the peak at {self.peak_at:%Y-%m-%d %H:%M}"
        )
