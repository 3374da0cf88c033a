"""Monitoring's stored state: the metric history, the alert rules and the alerts.

``MetricSnapshot`` is one row a minute (``monitoring.tasks.record_snapshot``) with the
figures of the minute before, read by the dashboard and the scaling predictor; kept 90
days. ``AlertRule`` holds the thresholds staff edit in admin (seeded from
``settings.MONITORING_ALERT_RULES``). ``Alert`` is one occurrence of a rule's condition,
from opened to resolved. Writes go through ``monitoring.services``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class MetricSnapshot(models.Model):
    """The host's figures over the minute before ``taken_at`` (rates, percentiles) and
    the gauges at that moment; ``totals`` is the raw reading the next one is derived from."""

    taken_at = models.DateTimeField(default=timezone.now, db_index=True)
    interval_s = models.FloatField(null=True, blank=True)  # since the previous snapshot
    connections = models.IntegerField(default=0)
    subscriptions = models.IntegerField(default=0)
    presence = models.IntegerField(default=0)
    outbox_depth = models.IntegerField(default=0)
    deliveries_per_s = models.FloatField(null=True, blank=True)
    publishes_per_s = models.FloatField(null=True, blank=True)
    frames_per_s = models.FloatField(null=True, blank=True)
    error_rate = models.FloatField(null=True, blank=True)
    latency_p50 = models.FloatField(null=True, blank=True)  # seconds
    latency_p95 = models.FloatField(null=True, blank=True)
    latency_p99 = models.FloatField(null=True, blank=True)
    cache_hit_ratio_l1 = models.FloatField(null=True, blank=True)
    cache_hit_ratio_l2 = models.FloatField(null=True, blank=True)
    cache_hit_ratio = models.FloatField(null=True, blank=True)  # either tier
    breakers_open = models.IntegerField(default=0)
    supplier_utilisation = models.FloatField(null=True, blank=True)  # busiest supplier / limit
    server_cpu = models.FloatField(null=True, blank=True)  # busiest server process, 1.0 = a core
    wedding_day_mode = models.BooleanField(default=False)
    totals = models.JSONField(default=dict)

    class Meta:
        ordering = ("-taken_at",)
        get_latest_by = "taken_at"
        verbose_name = "metric snapshot"

    def __str__(self) -> str:
        return f"metrics at {self.taken_at:%Y-%m-%d %H:%M}"


class AlertRule(models.Model):
    """The thresholds of one rule (monitoring.rules.RULES says what its value is)."""

    key = models.CharField(max_length=40, unique=True)
    enabled = models.BooleanField(default=True)
    warning = models.FloatField()
    critical = models.FloatField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("key",)
        verbose_name = "alert rule"

    def __str__(self) -> str:
        return self.key


class Alert(models.Model):
    """One occurrence of a rule's condition: opened, maybe acknowledged, then resolved."""

    class Severity(models.TextChoices):
        WARNING = "warning", "Warning"
        CRITICAL = "critical", "Critical"

    class Escalation(models.TextChoices):
        TECHNICAL = "technical", "Technical"
        MANAGEMENT = "management", "Management"
        EXECUTIVE = "executive", "Executive"

    rule = models.CharField(max_length=40, db_index=True)
    # What the alert is about within its rule: "" for a system-wide figure,
    # "wedding:42#17" for an unacknowledged event.
    subject = models.CharField(max_length=100, blank=True, default="")
    severity = models.CharField(max_length=10, choices=Severity.choices)
    escalation = models.CharField(
        max_length=12, choices=Escalation.choices, default=Escalation.TECHNICAL
    )
    value = models.FloatField(null=True, blank=True)
    message = models.CharField(max_length=500)
    opened_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_breach_at = models.DateTimeField(default=timezone.now)
    # Set while the condition is clear; the alert resolves once it stayed clear long enough.
    clear_since = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )  # fmt: skip
    resolved_at = models.DateTimeField(null=True, blank=True, db_index=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )  # fmt: skip

    class Meta:
        ordering = ("-opened_at", "-id")
        constraints = [
            # At most one unresolved alert per rule and subject, whoever evaluates.
            models.UniqueConstraint(
                fields=("rule", "subject"),
                condition=Q(resolved_at__isnull=True),
                name="monitoring_alert_one_unresolved",
            ),
        ]

    def __str__(self) -> str:
        about = f" {self.subject}" if self.subject else ""
        return f"{self.severity} {self.rule}{about} ({self.status})"

    @property
    def status(self) -> str:
        """'resolved', 'acknowledged' or 'open'."""
        if self.resolved_at is not None:
            return "resolved"
        return "acknowledged" if self.acknowledged_at is not None else "open"


class BenchmarkRun(models.Model):
    """One run of the Benchmark API (``/api/performance/realtime/benchmark``): a bounded
    load-test scenario against this deployment, its parameters and its report."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    scenario = models.CharField(max_length=40)
    params = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )  # fmt: skip
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    report = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("-started_at", "-id")
        # Starting a run loads the live deployment: staff need this permission too
        # (superusers have it), granted in admin like any other.
        permissions = [("run_benchmark", "Can start a benchmark run")]
        constraints = [
            # One run at a time, across every server process.
            models.UniqueConstraint(
                fields=("status",),
                condition=Q(status="running"),
                name="monitoring_one_benchmark_running",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scenario} at {self.started_at:%Y-%m-%d %H:%M} ({self.status})"
