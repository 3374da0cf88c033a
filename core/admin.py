"""Admin base classes any app may use: the audited on/off switch's change log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class SwitchLogAdmin(admin.ModelAdmin):
    """Admin of an audited on/off switch: staff switch it by adding a change, written by
    ``switch_service`` (stamped with who did it); the log itself is read-only."""

    switch_service: Callable[..., Any]

    list_display = ("changed_at", "enabled", "changed_by", "reason")
    list_filter = ("enabled",)
    search_fields = ("reason", "changed_by__username")
    fields = ("enabled", "reason")
    date_hierarchy = "changed_at"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # An audit log: once written, a row is only ever read.
        if obj is not None:
            return ("enabled", "reason", "changed_by", "changed_at")
        return ()

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is not None:
            return ("enabled", "reason", "changed_by", "changed_at")
        return ("enabled", "reason")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The change page is shown (read-only) to staff who may view; nothing is saved.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # Through the service (writes go through services): the change is stamped with
        # the staff member who made it and the cached state is dropped after commit.
        if change:  # never reached: rows are read-only
            return
        service = type(self).switch_service
        stored = service(enabled=obj.enabled, reason=obj.reason, user=request.user)
        obj.pk, obj.reason = stored.pk, stored.reason
        obj.changed_by, obj.changed_at = stored.changed_by, stored.changed_at
        obj._state.adding, obj._state.db = False, stored._state.db
