"""Admin of monitoring: alert thresholds (editable), alerts (acknowledge / resolve through
the services), the metric history (read-only). The live dashboard is its own admin page
(``/admin/monitoring/dashboard/``, linked from the admin index)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from realtime.admin import ReadOnlyAdmin

from . import services
from .models import Alert, AlertRule, BenchmarkRun, MetricSnapshot
from .rules import RULES


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    """The thresholds; the rules themselves are code (monitoring/rules.py)."""

    list_display = ("key", "title", "enabled", "warning", "critical", "direction", "unit")
    list_editable = ("enabled", "warning", "critical")
    fields = ("key", "description", "enabled", "warning", "critical", "direction", "unit")
    readonly_fields = ("key", "description", "direction", "unit")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # one row per rule, created from the settings

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[AlertRule]:
        services.alert_rules_ensure()
        return super().get_queryset(request)

    @admin.display(description="rule")
    def title(self, rule: AlertRule) -> str:
        return RULES[rule.key].title if rule.key in RULES else rule.key

    @admin.display(description="what the value is")
    def description(self, rule: AlertRule) -> str:
        return RULES[rule.key].description if rule.key in RULES else ""

    @admin.display(description="alerts when the value is")
    def direction(self, rule: AlertRule) -> str:
        spec = RULES.get(rule.key)
        return "at or below" if spec and spec.direction == "below" else "at or above"

    @admin.display(description="unit")
    def unit(self, rule: AlertRule) -> str:
        return RULES[rule.key].unit if rule.key in RULES else ""


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = (
        "opened_at", "severity", "rule", "subject", "escalation", "status_label", "message",
    )  # fmt: skip
    list_filter = ("severity", "escalation", "rule", ("resolved_at", admin.EmptyFieldListFilter))
    search_fields = ("rule", "subject", "message")
    date_hierarchy = "opened_at"
    actions = ("acknowledge", "resolve")
    readonly_fields = [f.name for f in Alert._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    @admin.display(description="status")
    def status_label(self, alert: Alert) -> str:
        return alert.status

    @admin.action(description="Acknowledge selected alerts (stops escalation)")
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        for alert in queryset:
            services.alert_acknowledge(alert_id=alert.pk, user=request.user)
        self.message_user(request, f"{queryset.count()} alert(s) acknowledged.", messages.SUCCESS)

    @admin.action(description="Resolve selected alerts")
    def resolve(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        for alert in queryset:
            services.alert_resolve(alert_id=alert.pk, user=request.user)
        self.message_user(request, f"{queryset.count()} alert(s) resolved.", messages.SUCCESS)


@admin.register(MetricSnapshot)
class MetricSnapshotAdmin(ReadOnlyAdmin):
    list_display = (
        "taken_at", "connections", "deliveries_per_s", "latency_p95", "error_rate",
        "cache_hit_ratio", "breakers_open", "wedding_day_mode",
    )  # fmt: skip
    date_hierarchy = "taken_at"
    list_filter = ("wedding_day_mode",)


@admin.register(BenchmarkRun)
class BenchmarkRunAdmin(ReadOnlyAdmin):
    """Runs of the Benchmark API: read-only (a run is started through the API)."""

    list_display = ("started_at", "scenario", "status", "started_by", "p99_ms", "missing")
    list_filter = ("scenario", "status")
    readonly_fields = (
        "scenario", "params", "status", "started_by", "started_at", "finished_at", "report",
        "error",
    )  # fmt: skip

    @admin.display(description="p99 ms")
    def p99_ms(self, run: BenchmarkRun) -> Any:
        return ((run.report or {}).get("deliveries") or {}).get("latency", {}).get("p99_ms")

    @admin.display(description="missing")
    def missing(self, run: BenchmarkRun) -> Any:
        return ((run.report or {}).get("deliveries") or {}).get("missing")
