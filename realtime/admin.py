"""Read-only admin of the event log, for staff: events, acknowledgements, topic cursors;
the platform identities that sign users in, which administrators may link and unlink; and
the API keys of the platform's backend (the key shown once; revoked, never deleted) with
the audit of their uses.

The log is written only by ``realtime.services``; editing a row here would break the
guarantees of PROTOCOL §7 (a changed payload would differ from what clients received,
a changed cursor would repeat seqs), so nobody may add, change or delete.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import SwitchLogAdmin
from realtime import api_keys
from realtime.models import (
    Ack,
    ApiKey,
    ApiKeyUse,
    Event,
    ExternalIdentity,
    ReadOnlyModeChange,
    TopicCursor,
)
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


class _ListField(forms.CharField):
    """A JSON list edited as comma-separated words."""

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(str(v) for v in value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:
        text = super().to_python(value)
        return [part.strip() for part in text.split(",") if part.strip()]


class ApiKeyForm(forms.ModelForm):
    wedding_ids = _ListField(required=False, help_text="Wedding ids, comma-separated.")
    topics = _ListField(
        required=False, help_text="Topics: wedding:<id>, or wedding:* for every wedding."
    )
    event_types = _ListField(
        required=False,
        help_text="Events it may publish: catalogue names, prefix.* (timeline.*) or *.",
    )

    class Meta:
        model = ApiKey
        fields = (
            "name",
            "can_read",
            "can_publish",
            "wedding_ids",
            "topics",
            "event_types",
            "expires_at",
        )

    def clean_wedding_ids(self) -> list[int]:
        try:
            return [int(v) for v in self.cleaned_data["wedding_ids"]]
        except ValueError:
            raise forms.ValidationError("wedding ids are whole numbers") from None

    def clean_topics(self) -> list[str]:
        topics = self.cleaned_data["topics"]
        for topic in topics:
            if not api_keys.TOPIC_RE.fullmatch(topic):
                raise forms.ValidationError(f"{topic!r} is not wedding:<id> or wedding:*")
        return topics

    def clean_event_types(self) -> list[str]:
        try:
            return api_keys.event_types_validate(self.cleaned_data["event_types"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not (data.get("can_read") or data.get("can_publish")):
            raise forms.ValidationError("a key may read, publish or both")
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """API keys (ADR 0024): the key is shown once, when created; afterwards only its
    prefix. A key is revoked (at once, in every process), never deleted: its events and
    audit rows name it."""

    form = ApiKeyForm
    list_display = (
        "name",
        "key_prefix",
        "can_read",
        "can_publish",
        "scope",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("can_publish", "can_read", "revoked_at")
    search_fields = ("name", "=prefix")
    readonly_fields = (
        "key_prefix",
        "user",
        "created_by",
        "created_at",
        "revoked_at",
        "last_used_at",
    )
    actions = ("revoke",)
    ordering = ("-created_at", "-id")

    @admin.display(description="key")
    def key_prefix(self, obj: ApiKey) -> str:
        return f"wsk_{obj.prefix}_…" if obj.prefix else ""

    @admin.display(description="scope")
    def scope(self, obj: ApiKey) -> str:
        where = [*obj.topics, *(f"wedding:{i}" for i in obj.wedding_ids)]
        return f"{', '.join(where) or 'no wedding'}; {', '.join(obj.event_types) or 'no event'}"

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        shown = None if change else api_keys.api_key_prepare(key=obj, created_by=request.user)
        super().save_model(request, obj, form, change)
        api_keys.api_key_invalidate(obj.prefix)
        if shown is not None:
            messages.warning(request, f"The API key, shown this once: {shown}")

    @admin.action(description="Revoke the selected API keys (at once)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        keys = list(queryset)
        for key in keys:
            api_keys.api_key_revoke(key=key)
        messages.success(request, f"Revoked {len(keys)} API key(s).")


@admin.register(ApiKeyUse)
class ApiKeyUseAdmin(ReadOnlyAdmin):
    """Every use of an API key, allowed or refused."""

    list_display = ("at", "key", "method", "path", "status", "outcome", "topic", "seq")
    list_filter = ("outcome", "status", "key")
    search_fields = ("=key__prefix", "=topic")
    list_select_related = ("key",)
    ordering = ("-at", "-id")
    date_hierarchy = "at"
    show_full_result_count = False
