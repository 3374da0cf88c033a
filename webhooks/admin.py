"""Admin of the webhooks: endpoints (the secret shown once, when generated), their
cursors, and the deliveries with the dead letters, which staff replay or redeliver
from (ADR 0023, docs/integration.md)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, Max, Q, QuerySet
from django.http import HttpRequest

from realtime.models import Event
from webhooks import selectors, signing, transport
from webhooks.models import Delivery, Endpoint, EndpointCursor
from webhooks.receivers import kick
from webhooks.services import deliveries_replay, endpoint_redeliver


class EndpointForm(forms.ModelForm):
    class Meta:
        model = Endpoint
        fields = ("name", "url", "secret", "event_types", "topics", "active")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            transport.url_check(url)
        except transport.UrlRefused as exc:
            raise forms.ValidationError(str(exc)) from exc
        return url

    def clean_secret(self) -> str:
        secret = self.cleaned_data.get("secret", "")
        if secret:
            try:
                signing.secret_key(secret)
            except ValueError as exc:
                raise forms.ValidationError(str(exc)) from exc
        return secret


class EndpointCursorInline(admin.TabularInline):
    model = EndpointCursor
    fields = ("topic", "last_seq")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _kick_on_commit(endpoint_ids: list[int]) -> None:
    transaction.on_commit(lambda: kick(endpoint_ids))


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ("name", "url", "active", "event_types", "topics", "dead_count")
    list_filter = ("active",)
    search_fields = ("name", "url")
    inlines = (EndpointCursorInline,)
    actions = ("replay_dead",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Endpoint]:
        dead = Count("deliveries", filter=Q(deliveries__status=Delivery.Status.DEAD))
        return super().get_queryset(request).annotate(dead=dead)

    @admin.display(description="dead deliveries", ordering="dead")
    def dead_count(self, obj: Endpoint) -> int:
        return getattr(obj, "dead", 0)

    @admin.display(description="secret")
    def secret_masked(self, obj: Endpoint) -> str:
        return f"{obj.secret[:10]}…" if obj.secret else ""

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = ["name", "url", "event_types", "topics", "active"]
        return [*fields[:2], "secret" if obj is None else "secret_masked", *fields[2:]]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else ("secret_masked",)

    def save_model(self, request: HttpRequest, obj: Endpoint, form: Any, change: bool) -> None:
        if not change:
            generated = not obj.secret
            obj.secret = obj.secret or signing.secret_generate()
            obj.since_event_id = Event.objects.aggregate(id=Max("id"))["id"] or 0
            if generated:
                messages.warning(
                    request,
                    f"The endpoint's signing secret, shown this once: {obj.secret}",
                )
        super().save_model(request, obj, form, change)
        transaction.on_commit(selectors.endpoints_active_forget)

    @admin.action(description="Replay the dead deliveries of the selected endpoints")
    def replay_dead(self, request: HttpRequest, queryset: QuerySet[Endpoint]) -> None:
        ids = deliveries_replay(deliveries=Delivery.objects.filter(endpoint__in=queryset))
        _kick_on_commit(ids)
        self.message_user(request, f"Dead deliveries replayed for {len(ids)} endpoint(s).")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    """The deliveries: dead letters (status "dead") stop their topic for their endpoint
    until replayed; "redeliver from this seq" sends a topic again from a delivery on."""

    list_display = (
        "endpoint",
        "topic",
        "seq",
        "event",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "last_error",
    )
    list_filter = ("status", "endpoint")
    search_fields = ("topic", "event", "message_id")
    readonly_fields = [f.name for f in Delivery._meta.fields]
    actions = ("replay_dead", "redeliver_from")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Replay the selected dead deliveries")
    def replay_dead(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        count = queryset.filter(status=Delivery.Status.DEAD).count()
        _kick_on_commit(deliveries_replay(deliveries=queryset))
        self.message_user(request, f"{count} dead delivery(ies) replayed.")

    @admin.action(description="Redeliver the topic from the selected delivery's seq on")
    def redeliver_from(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one delivery.", messages.ERROR)
            return
        delivery = queryset.get()
        count = endpoint_redeliver(
            endpoint_id=delivery.endpoint_id, topic=delivery.topic, from_seq=delivery.seq
        )
        _kick_on_commit([delivery.endpoint_id])
        self.message_user(
            request,
            f"{delivery.topic} is redelivered to endpoint {delivery.endpoint_id} from seq"
            f" {delivery.seq} ({count} recorded delivery(ies) made pending).",
        )
