"""Admin of wedding-day mode (an audited switch: staff switch it by adding a change; the
log is read-only), of the scaling decisions and of the capacity reservations."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from core.admin import SwitchLogAdmin
from scaling.models import CapacityReservation, ScalingDecision, WeddingDayModeChange
from scaling.services import wedding_day_mode_set


@admin.register(WeddingDayModeChange)
class WeddingDayModeChangeAdmin(SwitchLogAdmin):
    switch_service = wedding_day_mode_set


@admin.register(ScalingDecision)
class ScalingDecisionAdmin(admin.ModelAdmin):
    """The scaling decisions, newest first, with their reasons: an audit log, read-only
    (written by ``scaling.services.scaling_evaluate`` only)."""

    list_display = (
        "made_at",
        "action",
        "asgi_processes",
        "celery_workers",
        "connection_limit",
        "actuator",
        "actuator_status",
        "reason",
    )
    list_filter = ("action", "actuator_status", "actuator")
    search_fields = ("reason", "actuator_output")
    date_hierarchy = "made_at"
    readonly_fields = [f.name for f in ScalingDecision._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # viewed read-only by staff with the view permission

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CapacityReservation)
class CapacityReservationAdmin(admin.ModelAdmin):
    """The capacity reservations, soonest first: read-only (planned, moved, activated,
    released and cancelled by ``scaling.services.scaling_evaluate`` only)."""

    list_display = (
        "peak_at",
        "status",
        "asgi_processes",
        "celery_workers",
        "starts_at",
        "ends_at",
        "updated_at",
        "reason",
    )
    list_filter = ("status",)
    date_hierarchy = "peak_at"
    readonly_fields = [f.name for f in CapacityReservation._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
