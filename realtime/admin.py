"""Read-only admin of the event log, for staff: events, acknowledgements, topic cursors;
and the platform identities that sign users in, which administrators may link and unlink.

The log is written only by ``realtime.services``; editing a row here would break the
guarantees of PROTOCOL §7 (a changed payload would differ from what clients received,
a changed cursor would repeat seqs), so nobody may add, change or delete.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from core.admin import SwitchLogAdmin
from realtime.models import Ack, Event, ExternalIdentity, ReadOnlyModeChange, TopicCursor
from realtime.services import read_only_mode_set


class ReadOnlyAdmin(admin.ModelAdmin):
    """Staff may look; nobody may add, change or delete."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user = request.user
        return bool(user.is_active and user.is_staff)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("topic", "seq", "event", "priority", "ack_required", "actor_user", "created_at")
    list_filter = ("priority", "ack_required", "event", "created_at")
    search_fields = ("=topic", "event", "idempotency_key")
    list_select_related = ("actor_user",)
    ordering = ("-created_at", "-id")
    date_hierarchy = "created_at"
    show_full_result_count = False  # the log is big; COUNT(*) on every page is not free


@admin.register(Ack)
class AckAdmin(ReadOnlyAdmin):
    list_display = ("event", "user", "created_at")
    list_filter = ("created_at",)
    search_fields = ("=event__topic", "user__username")
    list_select_related = ("event", "user")
    ordering = ("-created_at", "-id")


@admin.register(TopicCursor)
class TopicCursorAdmin(ReadOnlyAdmin):
    list_display = ("topic", "last_seq")
    search_fields = ("topic",)
    ordering = ("topic",)


@admin.register(ReadOnlyModeChange)
class ReadOnlyModeChangeAdmin(SwitchLogAdmin):
    """Maintenance: while on, publishes and acks are refused with the reason given here."""

    switch_service = read_only_mode_set


@admin.register(ExternalIdentity)
class ExternalIdentityAdmin(admin.ModelAdmin):
    """Platform identities (JWT issuer + subject, PROTOCOL §2 v1.1). Stored on first sight
    by email; an administrator links what email may not (staff, a second subject, an
    email shared by two users) and deletes a row to unlink. Django's model permissions
    apply: changing who a subject signs in as is a superuser's or a granted right."""

    list_display = ("subject", "issuer", "user", "created_at")
    list_filter = ("issuer",)
    search_fields = ("=subject", "user__username", "user__email")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    readonly_fields = ("created_at",)
    ordering = ("-created_at", "-id")
