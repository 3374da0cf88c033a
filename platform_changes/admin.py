"""Admin of the change consumer: its position per slot and the changes it rejected
(read-only: both are written by the consumer alone)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import ChangeCursor, RejectedChange


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ChangeCursor)
class ChangeCursorAdmin(ReadOnly):
    list_display = ("slot", "lsn", "index", "updated_at")


@admin.register(RejectedChange)
class RejectedChangeAdmin(ReadOnly):
    list_display = ("at", "op", "platform_id", "wedding_id", "code", "message")
    list_filter = ("code", "op")
    search_fields = ("=platform_id", "=wedding_id")
    date_hierarchy = "at"
